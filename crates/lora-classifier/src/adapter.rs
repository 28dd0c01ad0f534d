//! PEFT's adapter format: `adapter_config.json` + `adapter_model.safetensors`, with PEFT's
//! tensor names (the in-memory names without the adapter name "default"), so that
//! `PeftModel.from_pretrained(base, dir)` loads ours and we load PEFT's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use common::atomic::StagingDir;
use serde_json::{json, Value};

use crate::lora::saved_name;
use crate::{Architecture, Checkpoint, LoraBias, LoraSettings, SequenceClassifier};

const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";
/// Our LoRA LayerNorm option (not PEFT's): written only when on.
const LAYER_NORM_KEY: &str = "lora_layer_norm";

/// adapter_config.json with every key PEFT 0.21 writes (sorted, as PEFT writes them).
fn config_json(model: &SequenceClassifier, s: &LoraSettings) -> Value {
    let number = |x: f64| {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            json!(x as i64)
        } else {
            json!(x)
        }
    };
    let mut c = json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": model.name_or_path,
        "bias": s.bias.as_str(),
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        // PEFT requires it for GPT-2's Conv1D (weights stored [in, out]).
        "fan_in_fan_out": model.arch == Architecture::Gpt2,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": number(s.alpha),
        "lora_bias": false,
        "lora_dropout": s.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        // What PeftModelForSequenceClassification sets.
        "modules_to_save": ["classifier", "score"],
        "monteclora_config": null,
        "peft_type": "LORA",
        // The PEFT version whose format this follows.
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": s.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": s.target_modules,
        "target_parameters": null,
        "task_type": "SEQ_CLS",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": s.use_rslora,
        "velora_config": null,
    });
    if s.layer_norm {
        c[LAYER_NORM_KEY] = json!(true);
    }
    c
}

pub(crate) fn save(model: &SequenceClassifier, dir: &Path) -> Result<()> {
    let s = model
        .lora
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no LoRA adapter to save"))?;
    let mut tensors = Vec::new();
    for (name, var) in model.trainable() {
        tensors.push((
            saved_name(&name),
            var.as_tensor()
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?,
        ));
    }
    let config = serde_json::to_string_pretty(&config_json(model, s))?;

    // Write a sibling folder, then swap it in: readers see the old adapter or the new one.
    let result = (|| -> Result<()> {
        let staged = StagingDir::new(dir)?;
        std::fs::write(staged.path().join(CONFIG), config)?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(tensors, Some(metadata), &staged.path().join(WEIGHTS))?;
        staged.commit()?;
        Ok(())
    })();
    result.with_context(|| format!("cannot save the adapter to {}", dir.display()))
}

/// The LoRA settings of a PEFT adapter_config.json; options we do not implement are errors.
fn settings(c: &Value, path: &Path) -> Result<LoraSettings> {
    let err = |msg: String| anyhow!("{}: {msg}", path.display());
    let get = |k: &str| c.get(k).filter(|v| !v.is_null());
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => return Err(err(format!("peft_type {other:?} is not supported (LORA)"))),
    }
    if let Some(t) = get("task_type")
        .and_then(Value::as_str)
        .filter(|t| *t != "SEQ_CLS")
    {
        return Err(err(format!(
            "task_type '{t}' is not a sequence-classification adapter (SEQ_CLS)"
        )));
    }
    for flag in ["use_dora", "lora_bias", "use_qalora"] {
        if get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(err(format!("{flag} is not supported")));
        }
    }
    for key in [
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layer_replication",
        "exclude_modules",
        "trainable_token_indices",
        "target_parameters",
    ] {
        let set = match get(key) {
            None => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(err(format!("{key} is not supported")));
        }
    }
    if let Some(Value::Array(m)) = get("modules_to_save") {
        if let Some(x) = m
            .iter()
            .find(|x| !matches!(x.as_str(), Some("classifier" | "score")))
        {
            return Err(err(format!(
                "modules_to_save {x} is not supported (only the head)"
            )));
        }
    }
    let r = get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| err("no integer r".into()))? as usize;
    let alpha = get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let target_modules = match get("target_modules") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(String::from)
                    .ok_or_else(|| err(format!("bad target module {t}")))
            })
            .collect::<Result<_>>()?,
        Some(Value::String(s)) => {
            return Err(err(format!(
                "target_modules as a regular expression ('{s}') is not supported"
            )))
        }
        Some(v) => return Err(err(format!("bad target_modules {v}"))),
    };
    let bias = match get("bias").and_then(Value::as_str).unwrap_or("none") {
        "none" => LoraBias::None,
        "all" => LoraBias::All,
        "lora_only" => LoraBias::LoraOnly,
        other => return Err(err(format!("bias '{other}' is not supported"))),
    };
    Ok(LoraSettings {
        r,
        alpha,
        dropout: get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        bias,
        target_modules,
        layer_norm: get(LAYER_NORM_KEY)
            .and_then(Value::as_bool)
            .unwrap_or(false),
        use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
    })
}

pub(crate) fn load(
    ckpt: &Checkpoint,
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<SequenceClassifier> {
    let config_path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let s = settings(&config, &config_path)?;
    let fits = || {
        format!(
            "the adapter {} does not fit the checkpoint {}",
            dir.display(),
            ckpt.dir().display()
        )
    };
    let model = SequenceClassifier::new(ckpt, Some(&s), 0, device, dtype).with_context(fits)?;

    let weights_path: PathBuf = dir.join(WEIGHTS);
    if !weights_path.is_file() {
        if dir.join("adapter_model.bin").exists() {
            bail!(
                "{}: only adapter_model.bin is present; save the adapter as safetensors",
                dir.display()
            )
        }
        bail!("{} is missing", weights_path.display())
    }
    let file = candle_core::safetensors::load(&weights_path, device)
        .with_context(|| format!("cannot read {}", weights_path.display()))?;
    let expected: HashMap<String, (String, candle_core::Var)> = model
        .trainable()
        .into_iter()
        .map(|(name, v)| (saved_name(&name), (name, v)))
        .collect();
    let head = format!("base_model.model.{}.", model.head.module);
    let mut names: Vec<&String> = file.keys().collect();
    names.sort();
    for name in names {
        let t = &file[name];
        // PEFT 0.21 with bias = "all" also writes the head's bias as
        // `<head>.modules_to_save.bias` (= `<head>.bias`) and `<head>.original_module.bias`
        // (the untrained one): both are redundant.
        let redundant = ["modules_to_save.", "original_module."].map(|s| format!("{head}{s}"));
        if redundant.iter().any(|r| name.starts_with(r.as_str())) {
            continue;
        }
        let Some((_, var)) = expected.get(name) else {
            bail!(
                "{}: tensor '{name}' matches no parameter of this {:?} model: the adapter was made for \
                 another model or with other settings",
                weights_path.display(),
                model.arch
            )
        };
        if t.dims() != var.dims() {
            bail!(
                "{}: tensor '{name}' has shape {:?} but this model's parameter has {:?}: the adapter was \
                 made for a model of another size",
                weights_path.display(),
                t.dims(),
                var.dims()
            )
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    // A PEFT adapter without the head (modules_to_save unset) keeps the checkpoint's head.
    for saved in expected.keys().filter(|k| !file.contains_key(*k)) {
        if !(saved.starts_with(&head) && ckpt.has_head()) {
            bail!("{}: tensor '{saved}' is missing", weights_path.display())
        }
    }
    Ok(model)
}
