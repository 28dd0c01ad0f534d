//! Reading `pipeline.yaml`: YAML → overrides (`--set`) → strict typed parsing → range checks,
//! each error naming the file and the key.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_norway::Value;

use super::*;

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
                bail!("key `lora.target_modules`: expected a non-empty list of module names, `{ALL_LINEAR}`, or null for the architecture's default");
            }
            if targets.len() > 1 && targets.iter().any(|t| t == ALL_LINEAR) {
                bail!("key `lora.target_modules`: `{ALL_LINEAR}` stands alone (write `lora.target_modules: {ALL_LINEAR}`), not in a list of names");
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
