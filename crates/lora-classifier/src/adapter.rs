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

/// The largest `lora_alpha` accepted: the LoRA update is scaled by alpha/r in f32, and PEFT
/// setups use up to a few hundred. The same bound as `lora.alpha` in the pipeline's config.
const MAX_ALPHA: f64 = 10_000.0;

/// The keys of adapter_config.json that we read, typed: a key of the wrong type is an error
/// naming it (a silent default would change every prediction: `"lora_alpha": "32"` is not 8).
/// Keys left out or null take PEFT's defaults; PEFT's other keys are not read.
#[derive(Debug, serde::Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    task_type: Option<String>,
    base_model_name_or_path: Option<String>,
    r: Option<u64>,
    lora_alpha: Option<f64>,
    lora_dropout: Option<f64>,
    target_modules: Option<Value>,
    bias: Option<String>,
    use_rslora: Option<bool>,
    use_dora: Option<bool>,
    lora_bias: Option<bool>,
    use_qalora: Option<bool>,
    modules_to_save: Option<Vec<String>>,
    rank_pattern: Option<Value>,
    alpha_pattern: Option<Value>,
    layers_to_transform: Option<Value>,
    layer_replication: Option<Value>,
    exclude_modules: Option<Value>,
    trainable_token_indices: Option<Value>,
    target_parameters: Option<Value>,
    #[serde(rename = "lora_layer_norm")]
    layer_norm: Option<bool>,
}

/// What an adapter_config.json says: the LoRA settings and the base model it was made for.
#[derive(Debug)]
struct AdapterSettings {
    lora: LoraSettings,
    base_model: Option<String>,
}

/// The LoRA settings of a PEFT adapter_config.json; options we do not implement are errors.
fn settings(c: &Value, path: &Path) -> Result<AdapterSettings> {
    let err = |msg: String| anyhow!("{}: {msg}", path.display());
    let c: PeftConfig = serde_path_to_error::deserialize(c).map_err(|e| {
        let key = e.path().to_string();
        err(format!("key `{key}`: {}", e.into_inner()))
    })?;
    match c.peft_type.as_deref() {
        Some("LORA") => {}
        other => return Err(err(format!("peft_type {other:?} is not supported (LORA)"))),
    }
    if let Some(t) = c.task_type.as_deref().filter(|t| *t != "SEQ_CLS") {
        return Err(err(format!(
            "task_type '{t}' is not a sequence-classification adapter (SEQ_CLS)"
        )));
    }
    for (flag, on) in [
        ("use_dora", c.use_dora),
        ("lora_bias", c.lora_bias),
        ("use_qalora", c.use_qalora),
    ] {
        if on == Some(true) {
            return Err(err(format!("{flag} is not supported")));
        }
    }
    for (key, value) in [
        ("rank_pattern", &c.rank_pattern),
        ("alpha_pattern", &c.alpha_pattern),
        ("layers_to_transform", &c.layers_to_transform),
        ("layer_replication", &c.layer_replication),
        ("exclude_modules", &c.exclude_modules),
        ("trainable_token_indices", &c.trainable_token_indices),
        ("target_parameters", &c.target_parameters),
    ] {
        let set = match value {
            None => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(err(format!("{key} is not supported")));
        }
    }
    if let Some(x) = c
        .modules_to_save
        .iter()
        .flatten()
        .find(|x| !matches!(x.as_str(), "classifier" | "score"))
    {
        return Err(err(format!(
            "modules_to_save \"{x}\" is not supported (only the head)"
        )));
    }
    let r = match c.r {
        Some(r @ 1..) => r as usize,
        Some(0) => return Err(err("r is 0, expected at least 1".into())),
        None => return Err(err("no integer r".into())),
    };
    // PEFT's default alpha is 8.
    let alpha = c.lora_alpha.unwrap_or(8.0);
    if !(alpha > 0.0 && alpha <= MAX_ALPHA) {
        return Err(err(format!(
            "lora_alpha {alpha} is out of range, expected a number in (0, {MAX_ALPHA}] (the \
             LoRA update is scaled by lora_alpha/r)"
        )));
    }
    let dropout = c.lora_dropout.unwrap_or(0.0);
    if !(0.0..1.0).contains(&dropout) {
        return Err(err(format!(
            "lora_dropout {dropout} is out of range, expected a value in [0, 1)"
        )));
    }
    let target_modules = match &c.target_modules {
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
    let bias = match c.bias.as_deref() {
        None => LoraBias::None,
        Some(text) => text
            .parse::<LoraBias>()
            .map_err(|_| err(format!("bias '{text}' is not supported")))?,
    };
    Ok(AdapterSettings {
        lora: LoraSettings {
            r,
            alpha,
            dropout,
            bias,
            target_modules,
            layer_norm: c.layer_norm.unwrap_or(false),
            use_rslora: c.use_rslora.unwrap_or(false),
        },
        base_model: c.base_model_name_or_path.filter(|s| !s.trim().is_empty()),
    })
}

/// Whether `name` has the shape of a hub repo id (`name` or `org/name`), not of a path.
fn looks_like_hub_id(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match name.split_once('/') {
        Some((org, repo)) => part(org) && part(repo),
        None => part(name),
    }
}

/// Checks the adapter's `base_model_name_or_path` against the model in use, where the two
/// can be compared: both hub ids. Same shapes do not make the same model (MiniLM-L6 and
/// paraphrase-MiniLM-L6 fit each other's adapters and give nonsense), so two different ids
/// are an error. Hub ids compare without case (the hub's own rule) and a legacy id without an
/// organisation matches its namespaced form (`gpt2` is `openai-community/gpt2`). A local path
/// on either side is not compared: a folder can hold any model and a model can sit in any
/// folder, so a path says nothing either way; shapes and tensor names are still checked, and
/// the pipeline's own adapter is tied to the model's file hashes by the train stage's stamp.
fn check_base_model(recorded: Option<&str>, ckpt: &Checkpoint, path: &Path) -> Result<()> {
    let (Some(recorded), Some(in_use)) = (recorded, ckpt.hub_id()) else {
        return Ok(());
    };
    if !looks_like_hub_id(recorded) {
        return Ok(());
    }
    let (a, b) = (recorded.to_ascii_lowercase(), in_use.to_ascii_lowercase());
    let name = |id: &str| id.rsplit('/').next().unwrap_or(id).to_string();
    let same = a == b || (!a.contains('/') || !b.contains('/')) && name(&a) == name(&b);
    if !same {
        bail!(
            "{}: base_model_name_or_path is \"{recorded}\" but the model in use is \"{in_use}\" \
             ({}): the adapter was trained on another model; use that model (--model or \
             model.source), or correct base_model_name_or_path if it is the same model under \
             another name",
            path.display(),
            ckpt.dir().display()
        );
    }
    Ok(())
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
    let AdapterSettings {
        lora: s,
        base_model,
    } = settings(&config, &config_path)?;
    check_base_model(base_model.as_deref(), ckpt, &config_path)?;
    let fits = || {
        format!(
            "the adapter {} does not fit the checkpoint {}",
            dir.display(),
            ckpt.dir().display()
        )
    };
    let mut model = SequenceClassifier::new(ckpt, None, 0, device, dtype)?;
    model.add_lora(ckpt, &s, 0).with_context(fits)?;

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
        if !t.dtype().is_float() {
            bail!(
                "{}: tensor '{name}' has dtype {:?}, expected a float (LoRA weights are never \
                 integers)",
                weights_path.display(),
                t.dtype()
            )
        }
        if !crate::all_finite(t)? {
            bail!(
                "{}: tensor '{name}' holds NaN or infinite values: the adapter is damaged",
                weights_path.display()
            )
        }
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

#[cfg(test)]
mod tests;
