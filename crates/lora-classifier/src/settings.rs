//! The LoRA hyper-parameters of a model, as PEFT's `LoraConfig` (PEFT's `tuners/lora/config.py`).

pub use choices::ALL_LINEAR;

/// LoRA hyper-parameters, as in PEFT's LoraConfig.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub bias: LoraBias,
    /// PEFT's list matching: a module matches when its path equals a name or ends with "." +
    /// name. Empty: the checkpoint's `default_target_modules()` (as PEFT does); [`ALL_LINEAR`]
    /// alone: its `all_linear_target_modules()` (PEFT's `all-linear`).
    pub target_modules: Vec<String>,
    /// A LayerNorm on the LoRA branch output before scaling (not a PEFT option; see `lora.rs`).
    pub layer_norm: bool,
    pub use_rslora: bool,
}

impl LoraSettings {
    /// s = alpha / r, or alpha / √r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// Which biases train, as PEFT's `bias` (the enum `lora.bias` in pipeline.yaml takes too).
pub use choices::LoraBias;
