//! A merged Hugging Face checkpoint: the LoRA updates folded into the base weights, the trained
//! head and biases included, under the names transformers' `BertForSequenceClassification` /
//! `GPT2ForSequenceClassification` load (`bert.…` + `classifier.*`, `transformer.…` +
//! `score.weight`, GPT-2's Conv1D weights [in, out]), with a config.json that says what the
//! labels are and the tokenizer files beside it. Plain transformers (no PEFT) loads it, and so
//! does our [`Checkpoint`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use common::atomic::StagingDir;
use common::shards;
use serde_json::{json, Map, Value};

use crate::checkpoint::all_finite;
use crate::lora::Part;
use crate::{Architecture, Checkpoint, SequenceClassifier};

/// The names of the two classes, by class index (0 = negative review, 1 = positive): the
/// export's `id2label`, and the labels `predict` prints.
pub const LABELS: [&str; 2] = ["negative", "positive"];

/// The files of an export: transformers' fast tokenizers need only tokenizer.json and
/// tokenizer_config.json (the slow tokenizers' vocab files are left out).
pub const EXPORT_FILES: [&str; 4] = [
    "config.json",
    shards::SINGLE_FILE,
    TOKENIZER,
    TOKENIZER_CONFIG,
];
const TOKENIZER: &str = "tokenizer.json";
const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// The dtype of an export's weights (one definition, shared with `export.dtype`).
pub use choices::{ExportDtype, Truncation};

fn candle_dtype(dtype: ExportDtype) -> DType {
    match dtype {
        ExportDtype::F32 => DType::F32,
        ExportDtype::Bf16 => DType::BF16,
        ExportDtype::F16 => DType::F16,
    }
}

/// The name config.json's `dtype` gives it (PyTorch's).
fn torch_name(dtype: ExportDtype) -> &'static str {
    match dtype {
        ExportDtype::F32 => "float32",
        ExportDtype::Bf16 => "bfloat16",
        ExportDtype::F16 => "float16",
    }
}

/// How to write an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    pub dtype: ExportDtype,
    /// The tokens per text the model was trained with (`model.max_len`): written as the
    /// tokenizer's `model_max_length`, so that `truncation=True` cuts texts where we do.
    pub max_len: usize,
    /// `model.truncation`: tail is written as `truncation_side: left`; head_tail has no
    /// tokenizer setting in transformers (its texts must be cut before the pipeline).
    pub truncation: Truncation,
}

/// Every tensor of the merged model by HF's name, in f32: the body in `named_parameters`
/// order, then the head.
pub(crate) fn merged_tensors(model: &SequenceClassifier) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for part in model.parts() {
        match part {
            Part::Linear(l) => l.merged_tensors(&mut out)?,
            Part::Norm(n) => n.tensors(&mut out)?,
            Part::Tensor(name, t) => out.push((name.to_string(), t.to_dtype(DType::F32)?)),
        }
    }
    let head = &model.head;
    out.push((
        format!("{}.weight", head.module),
        head.weight.as_detached_tensor(),
    ));
    if let Some(b) = &head.bias {
        out.push((format!("{}.bias", head.module), b.as_detached_tensor()));
    }
    Ok(out)
}

/// The checkpoint's config.json, made a classifier's: architectures, the labels, the dtype and
/// (GPT-2, which has no pad token of its own) the pad token the pipeline pads with.
fn config_json(model: &SequenceClassifier, ckpt: &Checkpoint, dtype: ExportDtype) -> Result<Value> {
    let path = ckpt.dir().join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut config: Map<String, Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    config.insert("architectures".into(), json!([model.arch.hf_classifier()]));
    config.insert("id2label".into(), json!({"0": LABELS[0], "1": LABELS[1]}));
    config.insert("label2id".into(), json!({LABELS[0]: 0, LABELS[1]: 1}));
    config.insert("num_labels".into(), json!(LABELS.len()));
    config.insert("problem_type".into(), json!("single_label_classification"));
    // transformers 5 reads `dtype`; older versions wrote `torch_dtype`.
    config.insert("dtype".into(), json!(torch_name(dtype)));
    if config.contains_key("torch_dtype") {
        config.insert("torch_dtype".into(), json!(torch_name(dtype)));
    }
    if model.arch == Architecture::Gpt2 {
        config.insert("pad_token_id".into(), json!(model.pad_token_id));
    }
    Ok(Value::Object(config))
}

/// The model folder's tokenizer_config.json (and special_tokens_map.json, which transformers 5
/// folds into it), with `model_max_length` = the trained length and, for GPT-2, the pad token
/// the pipeline pads with (GPT-2's own has none, and batched inference needs one).
fn tokenizer_config(
    model: &SequenceClassifier,
    dir: &Path,
    options: ExportOptions,
) -> Result<Value> {
    let read = |name: &str| -> Result<Map<String, Value>> {
        let path = dir.join(name);
        if !path.exists() {
            return Ok(Map::new());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON object", path.display()))
    };
    let mut config = read(TOKENIZER_CONFIG)?;
    for (key, value) in read(SPECIAL_TOKENS_MAP)? {
        config.entry(key).or_insert(value);
    }
    config.insert("model_max_length".into(), json!(options.max_len));
    let side = match options.truncation {
        Truncation::Tail => "left",
        Truncation::Head | Truncation::HeadTail => "right",
    };
    config.insert("truncation_side".into(), json!(side));
    if model.arch == Architecture::Gpt2 && !config.contains_key("pad_token") {
        config.insert("pad_token".into(), json!("<|endoftext|>"));
    }
    Ok(Value::Object(config))
}

/// Writes the export into `dir` (replaced whole, never left half-written).
pub(crate) fn export(
    model: &SequenceClassifier,
    ckpt: &Checkpoint,
    dir: &Path,
    options: ExportOptions,
) -> Result<()> {
    let result = (|| -> Result<()> {
        let staged = StagingDir::new(dir)?;
        write_files(model, ckpt, staged.path(), options)?;
        staged.commit()?;
        Ok(())
    })();
    result.with_context(|| format!("cannot export the model to {}", dir.display()))
}

/// Writes the export's files into `out`, an existing folder that the caller publishes whole
/// (a staging folder).
pub(crate) fn write_files(
    model: &SequenceClassifier,
    ckpt: &Checkpoint,
    out: &Path,
    options: ExportOptions,
) -> Result<()> {
    if ckpt.architecture() != model.arch || ckpt.hidden_size() != model.head.weight.dims()[1] {
        bail!(
            "{}: not the checkpoint this model was loaded from",
            ckpt.dir().display()
        )
    }
    let tokenizer = ckpt.dir().join(TOKENIZER);
    if !tokenizer.is_file() {
        bail!(
            "{} is missing: an export needs the model's tokenizer",
            tokenizer.display()
        )
    }
    let dtype = candle_dtype(options.dtype);
    let mut tensors = Vec::new();
    for (name, t) in merged_tensors(model)? {
        let t = t.to_dtype(dtype)?.to_device(&Device::Cpu)?;
        if !all_finite(&t)? {
            bail!(
                "tensor '{name}' has values beyond the range of {}: export as f32 or bf16",
                options.dtype.as_str()
            )
        }
        tensors.push((name, t));
    }
    let config = config_json(model, ckpt, options.dtype)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = out.join(shards::SINGLE_FILE);
    safetensors::serialize_to_file(tensors, Some(metadata), &weights)?;
    readable_by_all(&weights)?;
    write_json(&out.join("config.json"), &config)?;
    // Contents only: the HF cache's files are read-only, the export's are not.
    let bytes = std::fs::read(&tokenizer)
        .with_context(|| format!("cannot read {}", tokenizer.display()))?;
    std::fs::write(out.join(TOKENIZER), bytes)?;
    let tokenizer_config = tokenizer_config(model, ckpt.dir(), options)?;
    write_json(&out.join(TOKENIZER_CONFIG), &tokenizer_config)?;
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// safetensors creates its files readable by the owner only; an export is made to be shared.
fn readable_by_all(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
