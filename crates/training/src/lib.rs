//! Fine-tuning a [`lora_classifier::SequenceClassifier`]: PyTorch's optimizers, Hugging
//! Face's learning-rate schedules, gradient clipping, and a resumable training loop that
//! reports to an observer. A library: it knows nothing of the pipeline and prints nothing.
//!
//! - `optim`: AdamW, Adam, SGD, RMSprop over candle `Var`s, with exportable state.
//! - `schedule`: constant, linear, cosine and step schedules with warmup.
//! - `clip`: `clip_grad_norm_`.
//! - `batches`: padded token rows cut into batches, and the inference loop over them.
//! - `trainer`: the loop and validation; `history`: what it records; `observer`: what it
//!   reports; `log`: the records as JSON lines while it runs; `checkpoint`: its resumable state.
//! - `device`: a device and dtype setting to a candle device and dtype.
//! - `seeds`: the shuffles and dropout seeds, derived from the run seed.

pub mod batches;
pub mod checkpoint;
pub mod clip;
mod cuda;
pub mod device;
pub mod history;
pub mod log;
pub mod observer;
pub mod optim;
pub mod schedule;
pub mod seeds;
pub mod trainer;

pub use batches::{infer, Examples};
pub use checkpoint::CheckpointStore;
pub use clip::clip_grad_norm;
pub use history::{Record, RecordKind};
pub use log::{JsonLog, LOG_FILE};
pub use observer::{Event, Observer, Silent, Skipped};
pub use optim::{Optimizer, OptimizerKind, OptimizerSettings, OptimizerState};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    evaluate, evaluate_with_progress, stops_early, train, TrainOutcome, TrainSettings, Validation,
};
