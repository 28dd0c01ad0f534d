//! Running a [`lora_classifier::SequenceClassifier`], not training it: the device and dtype it
//! runs on, and the loop that classifies padded token rows in batches. Training's loop cuts
//! its batches here too; evaluate and predict need nothing else of training. A library: it
//! knows nothing of the pipeline and prints nothing.
//!
//! - `batches`: padded token rows cut into batches, and the inference loop over them.
//! - `device`: a device and dtype setting to a candle device and dtype.

pub mod batches;
pub mod device;

pub use batches::{infer, Examples};
