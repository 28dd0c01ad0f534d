//! `pipeline.yaml`: every setting of a run, parsed strictly.
//!
//! Unknown keys, wrong types and out-of-range values are errors that name the
//! file and the key, raised before any stage does work. Keys left out take the
//! defaults below (the seed notebook's values where it gives them).

use std::path::PathBuf;

/// The choice keys' values: one definition, shared with the libraries that act on them.
pub use choices::{
    DeviceSetting, DtypeSetting, EvaluateDtype, ExportDtype, LoraBias, OptimizerKind, ScheduleKind,
    Truncation,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seeds every random choice: sampling, shuffling, initialisation, dropout.
    pub seed: u64,
    /// Root folder of every stage's outputs.
    pub artifacts: PathBuf,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub lora: LoraConfig,
    pub training: TrainingConfig,
    pub evaluate: EvaluateConfig,
    pub report: ReportConfig,
    pub export: ExportConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A Hugging Face dataset id, a folder of `{train,test}-*.parquet`, an
    /// `aclImdb/` folder or `aclImdb_v1.tar.gz`.
    pub source: String,
    /// Hub revision (branch, tag or commit) when `source` is a hub dataset id.
    pub revision: String,
    /// Share of the train split that is sampled for training.
    pub train_fraction: f64,
    /// Share of the (shuffled) test split that becomes validation.
    pub validation_fraction: f64,
    /// Sample and split per label, keeping the label balance exact.
    pub stratify: bool,
    /// Caps on the split sizes after sampling (smoke runs); `null` = no cap.
    pub max_train: Option<usize>,
    pub max_validation: Option<usize>,
    pub max_test: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A Hugging Face model id (resolved through the HF cache) or a local folder.
    pub source: String,
    /// Hub revision (branch, tag or commit) when `source` is a hub id.
    pub revision: String,
    /// Tokens per review after padding/truncation.
    pub max_len: usize,
    /// Which tokens of a longer review are kept: head, tail or head_tail.
    pub truncation: Truncation,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub bias: LoraBias,
    /// `null` = the architecture's default (BERT: query, value; GPT-2: c_attn); `all-linear`
    /// (PEFT's value) = every linear layer but the classifier, held as the one-name list
    /// `[all-linear]`; else a list of module names.
    #[serde(with = "target_modules")]
    pub target_modules: Option<Vec<String>>,
    /// LayerNorm on the LoRA branch output (the seed notebook's option; not in PEFT).
    pub layer_norm: bool,
    pub use_rslora: bool,
}

/// `lora.target_modules` as YAML writes it: null, PEFT's string `all-linear`, or a list.
mod target_modules {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub use choices::ALL_LINEAR;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Written {
        One(String),
        List(Vec<String>),
    }

    pub fn serialize<S: Serializer>(value: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
        match value.as_deref() {
            Some([one]) if one == ALL_LINEAR => s.serialize_str(ALL_LINEAR),
            _ => value.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        match Option::<Written>::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a list of module names, `all-linear`, or null for the architecture's default",
            )
        })? {
            None => Ok(None),
            Some(Written::List(list)) => Ok(Some(list)),
            Some(Written::One(name)) if name == ALL_LINEAR => Ok(Some(vec![name])),
            Some(Written::One(name)) => Err(serde::de::Error::custom(format!(
                "`{name}`: expected a list of module names (`[{name}]`), `{ALL_LINEAR}`, or null"
            ))),
        }
    }
}

pub use choices::ALL_LINEAR;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeepAdapter {
    /// The epoch with the lowest validation loss.
    Best,
    Last,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    pub learning_rate: f64,
    /// Reviews per forward and backward pass.
    pub batch_size: usize,
    /// Batches whose gradients add up to one optimizer step: a step sees batch_size × this
    /// many reviews, in the memory of one batch.
    pub gradient_accumulation_steps: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps instead of `epochs`; `null` = every epoch.
    pub max_steps: Option<usize>,
    /// Stop when the validation loss has not improved for this many validations in a row;
    /// `null` = never.
    pub early_stopping_patience: Option<usize>,
    pub optimizer: OptimizerKind,
    /// SGD and RMSprop momentum.
    pub momentum: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub scheduler: ScheduleKind,
    /// Warmup in optimizer steps; `warmup_ratio` (of all steps) is used when this is 0.
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    /// `step` scheduler: multiply the learning rate by `step_gamma` every `step_size` steps.
    pub step_size: usize,
    pub step_gamma: f64,
    /// Clip the global gradient norm to this value; `null` = no clipping.
    pub max_grad_norm: Option<f64>,
    /// Validate every N optimizer steps too; `null` = after each epoch only.
    pub eval_every_steps: Option<usize>,
    /// Write a resumable checkpoint every N optimizer steps (and at each epoch end).
    pub checkpoint_every_steps: usize,
    pub keep: KeepAdapter,
    /// Where training (and evaluation) runs.
    pub device: DeviceSetting,
    /// The frozen base weights' dtype (LoRA and optimizer state stay f32).
    pub dtype: DtypeSetting,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateConfig {
    /// Probability of "positive" at or above which a review is predicted positive.
    pub threshold: f64,
    /// Also evaluate the validation split.
    pub validation: bool,
    pub batch_size: usize,
    /// The frozen weights' format in evaluate and predict.
    pub dtype: EvaluateDtype,
    /// Texts classified for the report (the notebook's examples).
    pub examples: Vec<String>,
}

/// A figure file format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The file extension, also the spelling in `pipeline.yaml`.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Svg => "svg",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    pub formats: Vec<ImageFormat>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// The merged checkpoint's weights: f32 (exact), bf16 or f16 (half the size).
    pub dtype: ExportDtype,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            dtype: ExportDtype::F32,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 42,
            artifacts: PathBuf::from("artifacts"),
            data: DataConfig::default(),
            model: ModelConfig::default(),
            lora: LoraConfig::default(),
            training: TrainingConfig::default(),
            evaluate: EvaluateConfig::default(),
            report: ReportConfig::default(),
            export: ExportConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: "stanfordnlp/imdb".into(),
            revision: "main".into(),
            train_fraction: 0.1,
            validation_fraction: 0.2,
            stratify: false,
            max_train: None,
            max_validation: None,
            max_test: None,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            source: "sentence-transformers/all-MiniLM-L6-v2".into(),
            revision: "main".into(),
            max_len: 128,
            truncation: Truncation::Head,
        }
    }
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 32.0,
            dropout: 0.1,
            bias: LoraBias::None,
            target_modules: None,
            layer_norm: false,
            use_rslora: false,
        }
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-4,
            batch_size: 16,
            gradient_accumulation_steps: 1,
            epochs: 3,
            max_steps: None,
            early_stopping_patience: None,
            optimizer: OptimizerKind::AdamW,
            momentum: 0.9,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            scheduler: ScheduleKind::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            step_size: 100,
            step_gamma: 0.5,
            max_grad_norm: None,
            eval_every_steps: None,
            checkpoint_every_steps: 50,
            keep: KeepAdapter::Best,
            device: DeviceSetting::Auto,
            dtype: DtypeSetting::Auto,
        }
    }
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            validation: false,
            batch_size: 64,
            dtype: EvaluateDtype::Auto,
            examples: vec![
                "This movie was absolutely fantastic! The acting was superb and the plot kept me engaged throughout.".into(),
                "I really hated this film. It was boring, predictable, and a complete waste of time.".into(),
                "The movie was okay. Some parts were good, but others dragged on too long.".into(),
            ],
        }
    }
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            formats: vec![ImageFormat::Png, ImageFormat::Svg],
        }
    }
}

/// Upper bounds of the keys that size allocations or scale the model, so that a typo (an
/// extra zero, a power of two too many) is an error naming the key, not an abort.
///
/// `lora.alpha`: the LoRA update is scaled by alpha/r in f32; PEFT setups use up to a few
/// hundred. Adapters read from `adapter_config.json` have the same bound (lora-classifier's
/// `adapter.rs`). `lora.r` is bounded by the model (r ≤ min(in, out) of each targeted layer),
/// which is checked when LoRA is added, before anything is allocated.
pub const MAX_LORA_ALPHA: f64 = 10_000.0;
/// Batches of `max_len` tokens: 4096 × 128 tokens of BERT activations already take
/// gigabytes.
pub const MAX_BATCH_SIZE: usize = 4096;
/// BERT checkpoints have 512 positions and GPT-2 1024; the tokenize and train stages also
/// check the model's own count.
pub const MAX_MAX_LEN: usize = 8192;
pub const MAX_EPOCHS: usize = 10_000;
pub const MAX_ACCUMULATION: usize = 10_000;

mod load;

#[cfg(test)]
mod tests;
