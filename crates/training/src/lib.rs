//! Fine-tuning a [`lora_classifier::SequenceClassifier`]: PyTorch's optimizers, Hugging
//! Face's learning-rate schedules, gradient clipping, and a resumable training loop that
//! reports to an observer. A library: it knows nothing of the pipeline and prints nothing.
//! Batching and the inference loop, and device and dtype selection, are the `inference`
//! crate's (re-exported here as `batches` and `device`).
//!
//! - `optim`: AdamW, Adam, SGD, RMSprop over candle `Var`s, with exportable state.
//! - `schedule`: constant, linear, cosine and step schedules with warmup.
//! - `clip`: `clip_grad_norm_`.
//! - `trainer`: the loop and validation; `history`: what it records; `observer`: what it
//!   reports; `log`: the records as JSON lines while it runs; `checkpoint`: its resumable state.
//! - `seeds`: the shuffles and dropout seeds, derived from the run seed.

pub mod checkpoint;
pub mod clip;
mod cuda;
pub mod history;
pub mod log;
pub mod observer;
pub mod optim;
pub mod schedule;
pub mod seeds;
pub mod trainer;

pub use checkpoint::CheckpointStore;
pub use clip::clip_grad_norm;
pub use history::{Record, RecordKind};
pub use inference::{batches, device, infer, Examples};
pub use log::{JsonLog, LOG_FILE};
pub use observer::{Event, Observer, Silent, Skipped};
pub use optim::{Optimizer, OptimizerKind, OptimizerSettings, OptimizerState};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    evaluate, evaluate_with_progress, stops_early, train, TrainOutcome, TrainSettings, Validation,
};
