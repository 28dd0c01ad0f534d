//! A merged Hugging Face checkpoint: the LoRA updates folded into the base weights, the trained
//! head and biases included, under the names transformers' `BertForSequenceClassification` /
//! `GPT2ForSequenceClassification` load (`bert.…` + `classifier.*`, `transformer.…` +
//! `score.weight`, GPT-2's Conv1D weights [in, out]), with a config.json that says what the
//! labels are and the tokenizer files beside it. Plain transformers (no PEFT) loads it, and so
//! does our [`Checkpoint`].

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

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

/// The tokenizer files copied into an export when the model folder has them (tokenizer.json is
/// required: the pipeline and transformers' fast tokenizers read it).
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// The dtype of an export's weights: f32 (exact), or bf16 / f16 for half the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl ExportDtype {
    pub fn dtype(self) -> DType {
        match self {
            ExportDtype::F32 => DType::F32,
            ExportDtype::Bf16 => DType::BF16,
            ExportDtype::F16 => DType::F16,
        }
    }

    /// The name config.json's `dtype` gives it (PyTorch's).
    fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::Bf16 => "bfloat16",
            ExportDtype::F16 => "float16",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExportDtype::F32 => "f32",
            ExportDtype::Bf16 => "bf16",
            ExportDtype::F16 => "f16",
        }
    }
}

impl FromStr for ExportDtype {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(ExportDtype::F32),
            "bf16" => Ok(ExportDtype::Bf16),
            "f16" => Ok(ExportDtype::F16),
            other => bail!("export dtype {other:?}: expected f32, bf16 or f16"),
        }
    }
}

/// How to write an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    pub dtype: ExportDtype,
    /// The tokens per text the model was trained with (`model.max_len`): written as the
    /// tokenizer's `model_max_length`, so that `truncation=True` cuts texts where we do.
    pub max_len: usize,
}

/// HF's class name for the model type's sequence classifier.
fn architecture_name(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Bert => "BertForSequenceClassification",
        Architecture::Gpt2 => "GPT2ForSequenceClassification",
    }
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
    config.insert(
        "architectures".into(),
        json!([architecture_name(model.arch)]),
    );
    config.insert("id2label".into(), json!({"0": LABELS[0], "1": LABELS[1]}));
    config.insert("label2id".into(), json!({LABELS[0]: 0, LABELS[1]: 1}));
    config.insert("num_labels".into(), json!(LABELS.len()));
    config.insert("problem_type".into(), json!("single_label_classification"));
    // transformers 5 reads `dtype`; older versions wrote `torch_dtype`.
    config.insert("dtype".into(), json!(dtype.torch_name()));
    if config.contains_key("torch_dtype") {
        config.insert("torch_dtype".into(), json!(dtype.torch_name()));
    }
    if model.arch == Architecture::Gpt2 {
        config.insert("pad_token_id".into(), json!(model.pad_token_id));
    }
    Ok(Value::Object(config))
}

/// tokenizer_config.json with `model_max_length` = the trained length and, for GPT-2, the pad
/// token the pipeline pads with (GPT-2's own has none, and batched inference needs one).
fn tokenizer_config(model: &SequenceClassifier, src: &Path, max_len: usize) -> Result<Value> {
    let mut config = if src.exists() {
        let text = std::fs::read_to_string(src)
            .with_context(|| format!("cannot read {}", src.display()))?;
        serde_json::from_str::<Map<String, Value>>(&text)
            .with_context(|| format!("{} is not a JSON object", src.display()))?
    } else {
        Map::new()
    };
    config.insert("model_max_length".into(), json!(max_len));
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
    let tokenizer = ckpt.dir().join("tokenizer.json");
    if !tokenizer.is_file() {
        bail!(
            "{} is missing: an export needs the model's tokenizer",
            tokenizer.display()
        )
    }
    let dtype = options.dtype.dtype();
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
    for name in TOKENIZER_FILES {
        let src = ckpt.dir().join(name);
        if *name == TOKENIZER_CONFIG {
            write_json(
                &out.join(name),
                &tokenizer_config(model, &src, options.max_len)?,
            )?;
        } else if src.is_file() {
            // Contents only: the HF cache's files are read-only, the export's are not.
            let bytes =
                std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            std::fs::write(out.join(name), bytes)?;
        }
    }
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
