//! `train/summary.json`: what the train stage did, for the report.

use serde::{Deserialize, Serialize};

pub const SUMMARY_FILE: &str = "summary.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub trainable_parameters: usize,
    pub total_parameters: usize,
    /// PEFT's `print_trainable_parameters` line.
    pub parameters_line: String,
    /// Seconds of this run's training (validation included), not counting a resumed
    /// run's earlier part.
    pub wall_time_s: f64,
    /// Training samples per second over this run's training steps.
    pub samples_per_s: f64,
    pub epochs: usize,
    /// Optimizer steps in all.
    pub steps: u64,
    pub train_samples: usize,
    pub validation_samples: usize,
    /// 1-based epoch with the lowest validation loss.
    pub best_epoch: u32,
    /// `best` or `last`: which epoch's adapter was saved.
    pub kept: String,
    /// The epoch whose adapter was saved.
    pub adapter_epoch: u32,
    pub final_val_loss: f64,
    pub final_val_accuracy: f64,
    pub best_val_loss: f64,
    pub best_val_accuracy: f64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The frozen base weights' dtype (LoRA weights and optimizer state are f32).
    pub dtype: String,
    /// What computed the frozen layers: device, dtype and kernel (`cpu bf16 avx512-bf16`,
    /// `cuda bf16`); empty in summaries written before it was recorded.
    #[serde(default)]
    pub runs_on: String,
    /// CPU threads candle used.
    pub threads: usize,
    /// The optimizer step of the checkpoint this run resumed from, if it did.
    pub resumed_from_step: Option<u64>,
    /// `model.revision`, and the hub commit the model's files came from (its snapshot in the
    /// HF cache; `None` for a local folder).
    #[serde(default)]
    pub model_revision: String,
    #[serde(default)]
    pub model_commit: Option<String>,
}
