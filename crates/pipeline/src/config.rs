//! `pipeline.yaml`: every setting of a run, parsed strictly.
//!
//! Unknown keys, wrong types and out-of-range values are errors that name the
//! file and the key, raised before any stage does work. Keys left out take the
//! defaults below (the seed notebook's values where it gives them).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
/// The choice keys' values: one definition, shared with the libraries that act on them.
pub use choices::{
    DeviceSetting, DtypeSetting, EvaluateDtype, ExportDtype, LoraBias, OptimizerKind, ScheduleKind,
    Truncation,
};
use serde::{Deserialize, Serialize};
use serde_norway::Value;

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
    /// `null` = the architecture's default (BERT: query, value; GPT-2: c_attn).
    pub target_modules: Option<Vec<String>>,
    /// LayerNorm on the LoRA branch output (the seed notebook's option; not in PEFT).
    pub layer_norm: bool,
    pub use_rslora: bool,
}

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

impl Config {
    /// Reads `path`, applies `overrides` (`section.key=value`, the value in
    /// YAML syntax) and validates. Every error names the file and the key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the config file {} (pass --config PATH to use another)",
                path.display()
            )
        })?;
        Self::from_yaml(&text, &path.display().to_string(), overrides)
    }

    /// Parses YAML text; `origin` names where it came from in errors.
    pub fn from_yaml(text: &str, origin: &str, overrides: &[String]) -> Result<Config> {
        let mut doc: Value = if text.trim().is_empty() {
            Value::Mapping(Default::default())
        } else {
            serde_norway::from_str(text).with_context(|| format!("{origin}: not valid YAML"))?
        };
        if doc.is_null() {
            doc = Value::Mapping(Default::default());
        }
        // Checked before the overrides, so that a file that is not a mapping is blamed, not
        // the first `--set`.
        if !doc.is_mapping() {
            bail!(
                "{origin}: expected a mapping of sections (seed, artifacts, data, model, lora, \
                 training, evaluate, report, export) at the top level, found {}",
                yaml_kind(&doc)
            );
        }
        for item in overrides {
            apply_override(&mut doc, item).with_context(|| format!("--set {item}"))?;
        }
        let config: Config = serde_path_to_error::deserialize(doc).map_err(|err| {
            let key = err.path().to_string();
            anyhow::anyhow!("{origin}: key `{key}`: {}", err.into_inner())
        })?;
        config
            .validate()
            .map_err(|err| anyhow::anyhow!("{origin}: {err}"))?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        fn fraction(key: &str, v: f64) -> Result<()> {
            if !(v > 0.0 && v <= 1.0) {
                bail!("key `{key}`: {v} is out of range, expected a fraction in (0, 1]");
            }
            Ok(())
        }
        fn positive(key: &str, v: usize) -> Result<()> {
            if v == 0 {
                bail!("key `{key}`: must be at least 1, got 0");
            }
            Ok(())
        }
        fn at_most(key: &str, v: usize, max: usize, why: &str) -> Result<()> {
            if v > max {
                bail!("key `{key}`: {v} is out of range, expected at most {max} ({why})");
            }
            Ok(())
        }
        fn finite_positive(key: &str, v: f64) -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("key `{key}`: {v} is out of range, expected a positive number");
            }
            Ok(())
        }
        fn unit_interval(key: &str, v: f64) -> Result<()> {
            if !(0.0..1.0).contains(&v) {
                bail!("key `{key}`: {v} is out of range, expected a value in [0, 1)");
            }
            Ok(())
        }
        // An empty root would put every stage folder into the working directory.
        if self
            .artifacts
            .as_os_str()
            .to_string_lossy()
            .trim()
            .is_empty()
        {
            bail!("key `artifacts`: must not be empty: name a folder of its own for the outputs");
        }
        if self.data.source.trim().is_empty() {
            bail!("key `data.source`: must not be empty");
        }
        for (key, revision) in [
            ("data.revision", &self.data.revision),
            ("model.revision", &self.model.revision),
        ] {
            if revision.trim().is_empty() {
                bail!(
                    "key `{key}`: must not be empty (a branch, tag or commit; `main` by default)"
                );
            }
        }
        fraction("data.train_fraction", self.data.train_fraction)?;
        fraction("data.validation_fraction", self.data.validation_fraction)?;
        for (key, cap) in [
            ("data.max_train", self.data.max_train),
            ("data.max_validation", self.data.max_validation),
            ("data.max_test", self.data.max_test),
        ] {
            if let Some(cap) = cap {
                positive(key, cap)?;
            }
        }
        if self.model.source.trim().is_empty() {
            bail!("key `model.source`: must not be empty");
        }
        if self.model.max_len < 2 {
            bail!(
                "key `model.max_len`: must be at least 2, got {}",
                self.model.max_len
            );
        }
        at_most(
            "model.max_len",
            self.model.max_len,
            MAX_MAX_LEN,
            "BERT models have 512 positions, GPT-2 1024",
        )?;
        positive("lora.r", self.lora.r)?;
        finite_positive("lora.alpha", self.lora.alpha)?;
        if self.lora.alpha > MAX_LORA_ALPHA {
            bail!(
                "key `lora.alpha`: {} is out of range, expected at most {MAX_LORA_ALPHA} \
                 (the LoRA update is scaled by alpha/r)",
                self.lora.alpha
            );
        }
        unit_interval("lora.dropout", self.lora.dropout)?;
        if let Some(targets) = &self.lora.target_modules {
            if targets.is_empty() || targets.iter().any(|t| t.trim().is_empty()) {
                bail!("key `lora.target_modules`: expected a non-empty list of module names, or null for the architecture's default");
            }
        }
        let t = &self.training;
        finite_positive("training.learning_rate", t.learning_rate)?;
        positive("training.batch_size", t.batch_size)?;
        let batch_why = "a batch is held in memory at once";
        at_most(
            "training.batch_size",
            t.batch_size,
            MAX_BATCH_SIZE,
            batch_why,
        )?;
        positive("training.epochs", t.epochs)?;
        at_most(
            "training.epochs",
            t.epochs,
            MAX_EPOCHS,
            "a run that long is a typo",
        )?;
        unit_interval("training.momentum", t.momentum)?;
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            bail!(
                "key `training.weight_decay`: {} is out of range, expected >= 0",
                t.weight_decay
            );
        }
        unit_interval("training.adam_beta1", t.adam_beta1)?;
        unit_interval("training.adam_beta2", t.adam_beta2)?;
        finite_positive("training.adam_epsilon", t.adam_epsilon)?;
        unit_interval("training.warmup_ratio", t.warmup_ratio)?;
        positive("training.step_size", t.step_size)?;
        finite_positive("training.step_gamma", t.step_gamma)?;
        if let Some(norm) = t.max_grad_norm {
            finite_positive("training.max_grad_norm", norm)?;
        }
        if let Some(n) = t.eval_every_steps {
            positive("training.eval_every_steps", n)?;
        }
        positive(
            "training.gradient_accumulation_steps",
            t.gradient_accumulation_steps,
        )?;
        at_most(
            "training.gradient_accumulation_steps",
            t.gradient_accumulation_steps,
            MAX_ACCUMULATION,
            "a step of that many batches is a typo",
        )?;
        if let Some(n) = t.max_steps {
            positive("training.max_steps", n)?;
        }
        if let Some(n) = t.early_stopping_patience {
            positive("training.early_stopping_patience", n)?;
        }
        positive("training.checkpoint_every_steps", t.checkpoint_every_steps)?;
        if !(0.0..=1.0).contains(&self.evaluate.threshold) {
            bail!(
                "key `evaluate.threshold`: {} is out of range, expected a probability in [0, 1]",
                self.evaluate.threshold
            );
        }
        positive("evaluate.batch_size", self.evaluate.batch_size)?;
        at_most(
            "evaluate.batch_size",
            self.evaluate.batch_size,
            MAX_BATCH_SIZE,
            batch_why,
        )?;
        if self.report.formats.is_empty() {
            bail!("key `report.formats`: expected at least one of png, svg");
        }
        Ok(())
    }

    /// The values of the named keys (`"data"`, `"model.max_len"`, `"seed"`),
    /// as the JSON object a stage's stamp records.
    pub fn sections(&self, keys: &[&str]) -> serde_json::Value {
        let full = serde_json::to_value(self).expect("config serialises");
        let mut picked = serde_json::Map::new();
        for key in keys {
            let mut node = &full;
            for part in key.split('.') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("no config key {key}"));
            }
            picked.insert((*key).to_string(), node.clone());
        }
        serde_json::Value::Object(picked)
    }

    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("config serialises")
    }
}

/// What a YAML node is, for errors.
fn yaml_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Sets `a.b.c=value` in the YAML tree, the value parsed as YAML (so `0.1`
/// is a number, `[query, value]` a list and `null` clears an optional key).
fn apply_override(doc: &mut Value, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| "expected section.key=value")?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("expected section.key=value, got key {key:?}");
    }
    let value: Value =
        serde_norway::from_str(raw).with_context(|| format!("value {raw:?} is not valid YAML"))?;
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = doc;
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            Value::Mapping(map) => map,
            _ => bail!("`{}` is not a section", parts[..i].join(".")),
        };
        let k = Value::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    unreachable!("the key has at least one part")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Config> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_yaml(text, "test.yaml", &sets)
    }

    #[test]
    fn revisions_must_not_be_empty() {
        for key in ["data.revision", "model.revision"] {
            let err = Config::from_yaml("", "p.yaml", &[format!("{key}=''")])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("key `{key}`: must not be empty")),
                "{err}"
            );
        }
        let c = Config::from_yaml("data:\n  revision: v1.0\n", "p.yaml", &[]).unwrap();
        assert_eq!(
            (c.data.revision.as_str(), c.model.revision.as_str()),
            ("v1.0", "main")
        );
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(load("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn the_repository_pipeline_yaml_parses_and_holds_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipeline.yaml");
        let config = Config::load(&path, &[]).unwrap();
        // Every key is spelled out in the file, so it must round-trip to the same tree.
        let text = std::fs::read_to_string(&path).unwrap();
        let written: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let parsed = serde_json::to_value(&config).unwrap();
        assert_eq!(written, parsed, "pipeline.yaml must list every key");
    }

    #[test]
    fn overrides_take_yaml_values() {
        let c = load(
            "training:\n  epochs: 2\n",
            &[
                "training.learning_rate=2e-5",
                "lora.target_modules=[query, key]",
                "data.max_train=null",
            ],
        )
        .unwrap();
        assert_eq!(c.training.epochs, 2);
        assert_eq!(c.training.learning_rate, 2e-5);
        assert_eq!(
            c.lora.target_modules,
            Some(vec!["query".to_string(), "key".to_string()])
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load("lora:\n  rank: 8\n", &[]).unwrap_err().to_string();
        assert!(err.contains("test.yaml") && err.contains("rank"), "{err}");
        let err = load("", &["training.lr=1"]).unwrap_err();
        assert!(format!("{err:#}").contains("lr"), "{err:#}");
    }

    #[test]
    fn wrong_types_are_named() {
        let err = load("training:\n  batch_size: sixteen\n", &[]).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("training.batch_size"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        for (set, key) in [
            ("lora.r=0", "lora.r"),
            ("lora.dropout=1.0", "lora.dropout"),
            ("lora.dropout=-0.1", "lora.dropout"),
            ("data.train_fraction=0", "data.train_fraction"),
            ("data.validation_fraction=1.5", "data.validation_fraction"),
            ("training.batch_size=0", "training.batch_size"),
            ("training.device=gpu", "training.device"),
            ("training.dtype=f64", "training.dtype"),
            ("evaluate.threshold=2", "evaluate.threshold"),
            // Sizes that would abort on allocation or overflow.
            ("lora.alpha=1e6", "lora.alpha"),
            ("lora.alpha=.inf", "lora.alpha"),
            ("training.batch_size=4097", "training.batch_size"),
            ("evaluate.batch_size=1099511627776", "evaluate.batch_size"),
            ("model.max_len=1099511627776", "model.max_len"),
            ("training.epochs=1000000000", "training.epochs"),
            ("artifacts=''", "artifacts"),
            ("artifacts=' '", "artifacts"),
        ] {
            let err = load("", &[set]).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("test.yaml"),
                "{set}: {err}"
            );
        }
    }

    #[test]
    fn bounds_are_inclusive_and_named_in_the_error() {
        let c = load(
            "",
            &[
                "lora.alpha=10000",
                "training.batch_size=4096",
                "evaluate.batch_size=4096",
                "model.max_len=8192",
            ],
        )
        .unwrap();
        assert_eq!(c.lora.alpha, MAX_LORA_ALPHA);
        assert_eq!(c.training.batch_size, MAX_BATCH_SIZE);
        let err = load("", &["training.batch_size=5000"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "test.yaml: key `training.batch_size`: 5000 is out of range, expected at most 4096 \
             (a batch is held in memory at once)"
        );
    }

    #[test]
    fn a_file_that_is_not_a_mapping_is_blamed_not_the_override() {
        for (text, kind) in [
            ("- seed: 1\n- lora: {}\n", "a list"),
            ("42\n", "a number"),
            ("just words\n", "a string"),
        ] {
            let err = format!("{:#}", load(text, &["lora.r=4"]).unwrap_err());
            assert!(
                err.starts_with("test.yaml: expected a mapping of sections")
                    && err.contains(kind)
                    && !err.contains("--set"),
                "{err}"
            );
        }
        // A bad override on a good file still blames the override.
        let err = format!("{:#}", load("seed: 1\n", &["seed.x=1"]).unwrap_err());
        assert!(err.contains("--set seed.x=1") && err.contains("`seed` is not a section"));
    }

    #[test]
    fn enums_are_strict() {
        let err = load("training:\n  optimizer: lion\n", &[]).unwrap_err();
        assert!(err.to_string().contains("training.optimizer"), "{err}");
        assert!(load("", &["lora.bias=lora_only"]).is_ok());
    }

    #[test]
    fn sections_pick_named_keys() {
        let c = Config::default();
        let s = c.sections(&["seed", "model.max_len"]);
        assert_eq!(s["seed"], 42);
        assert_eq!(s["model.max_len"], 128);
    }

    #[test]
    fn devices_and_dtypes_are_typed_once_parsed() {
        let c = load("training:\n  device: cuda:1\n  dtype: bf16\n", &[]).unwrap();
        assert_eq!(c.training.device, DeviceSetting::Cuda(1));
        assert_eq!(c.training.dtype, DtypeSetting::Bf16);
        let err = load("", &["training.device=cuda:x"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `training.device`") && err.contains("cuda:N"),
            "{err}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Keys of every section, with values drawn from the types YAML can spell.
        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "seed",
                "artifacts",
                "data.source",
                "data.train_fraction",
                "data.max_test",
                "model.source",
                "model.max_len",
                "lora.r",
                "lora.alpha",
                "lora.dropout",
                "lora.bias",
                "lora.target_modules",
                "training.batch_size",
                "training.epochs",
                "training.optimizer",
                "training.device",
                "training.max_grad_norm",
                "evaluate.threshold",
                "evaluate.batch_size",
                "report.formats",
                "lora",
                "nonsense",
                "training.nonsense",
            ])
            .prop_map(String::from)
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<u64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:e}")),
                Just("null".to_string()),
                Just(".nan".to_string()),
                Just("-.inf".to_string()),
                Just("[query, value]".to_string()),
                Just("{a: 1}".to_string()),
                "[a-z_:0-9]{0,12}",
            ]
        }

        /// The config a successful parse gives is valid: it parses again to itself.
        fn round_trips(c: &Config) {
            let again = Config::from_yaml(&c.to_yaml(), "again.yaml", &[]).unwrap();
            assert_eq!(&again, c);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn garbled_text_never_panics(text in "\\PC{0,200}") {
                match Config::from_yaml(&text, "fuzz.yaml", &[]) {
                    Ok(c) => round_trips(&c),
                    Err(e) => {
                        let e = format!("{e:#}");
                        prop_assert!(e.contains("fuzz.yaml"), "{}", e)
                    }
                }
            }

            #[test]
            fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                let text = String::from_utf8_lossy(&bytes);
                if let Ok(c) = Config::from_yaml(&text, "fuzz.yaml", &[]) {
                    round_trips(&c);
                }
            }

            #[test]
            fn random_keys_and_values_give_an_error_naming_the_origin_or_a_valid_config(
                entries in prop::collection::vec((key(), value()), 0..6),
                as_overrides in any::<bool>(),
            ) {
                let lines: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let result = if as_overrides {
                    Config::from_yaml("", "fuzz.yaml", &lines)
                } else {
                    // Nested YAML from the dotted keys (a later key may clash with an earlier
                    // one: that is an error too, not a panic).
                    let mut text = String::new();
                    for (k, v) in &entries {
                        let parts: Vec<&str> = k.split('.').collect();
                        for (depth, part) in parts.iter().enumerate() {
                            let indent = "  ".repeat(depth);
                            if depth + 1 == parts.len() {
                                text.push_str(&format!("{indent}{part}: {v}\n"));
                            } else {
                                text.push_str(&format!("{indent}{part}:\n"));
                            }
                        }
                    }
                    Config::from_yaml(&text, "fuzz.yaml", &[])
                };
                match result {
                    Ok(c) => round_trips(&c),
                    Err(e) => {
                        let e = format!("{e:#}");
                        prop_assert!(e.contains("fuzz.yaml") || e.contains("--set"), "{e}");
                    }
                }
            }
        }
    }
}
