//! Fine-tuning a [`lora_classifier::SequenceClassifier`]: PyTorch's optimizers, Hugging
//! Face's learning-rate schedules, gradient clipping, and a resumable training loop.
//!
//! - `optim`: AdamW, Adam, SGD, RMSprop over candle `Var`s, with exportable state.
//! - `schedule`: constant, linear, cosine and step schedules with warmup.
//! - `clip`: `clip_grad_norm_`.
//! - `trainer`: the loop, validation and history; `checkpoint`: its resumable state.
//! - `device`: the device and dtype from the config.
//! - `seeds`: the shuffles and dropout seeds, derived from the run seed.

pub mod checkpoint;
pub mod clip;
mod cuda;
pub mod device;
pub mod optim;
pub mod schedule;
pub mod seeds;
pub mod trainer;

pub use checkpoint::CheckpointStore;
pub use clip::clip_grad_norm;
pub use optim::{Optimizer, OptimizerKind, OptimizerState};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{evaluate, train, TrainOutcome, TrainSettings, Validation};
