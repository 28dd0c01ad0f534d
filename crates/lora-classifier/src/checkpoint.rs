//! A Hugging Face checkpoint folder: `config.json` plus `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), for `model_type` bert or gpt2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use common::shards;
use serde::Deserialize;

use crate::activation::Act;
use crate::lora::{Linear, Norm};
use crate::Architecture;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    pub position_embedding_type: String,
    pub classifier_dropout: Option<f64>,
}

impl Default for BertConfig {
    /// transformers' BertConfig defaults.
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            position_embedding_type: "absolute".into(),
            classifier_dropout: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    pub activation_function: String,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
    pub attn_pdrop: f64,
    pub layer_norm_epsilon: f64,
    pub initializer_range: f64,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl Default for Gpt2Config {
    /// transformers' GPT2Config defaults.
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: "gelu_new".into(),
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            eos_token_id: Some(50256),
            pad_token_id: None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Config {
    Bert(BertConfig),
    Gpt2(Gpt2Config),
}

pub(crate) fn activation(name: &str, config: &Path) -> Result<Act> {
    match name {
        "gelu" => Ok(Act::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Act::GeluTanh),
        other => bail!(
            "{}: activation '{other}' is not supported (gelu, gelu_new)",
            config.display()
        ),
    }
}

/// A loaded Hugging Face checkpoint folder (weights are memory-mapped, not yet read).
pub struct Checkpoint {
    dir: PathBuf,
    name_or_path: String,
    pub(crate) config: Config,
    num_labels: usize,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
    /// The prefix of the body's tensors in the files ("bert." / "transformer." or "").
    prefix: &'static str,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("num_labels", &self.num_labels)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Checkpoint {
    /// Reads `config.json` and finds the safetensors weights in `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let parse_err = || format!("{}: invalid {model_type} config", config_path.display());
        let config = match model_type {
            "bert" => Config::Bert(serde_json::from_value(raw.clone()).with_context(parse_err)?),
            "gpt2" => Config::Gpt2(serde_json::from_value(raw.clone()).with_context(parse_err)?),
            "" => bail!(
                "{}: no model_type (expected bert or gpt2)",
                config_path.display()
            ),
            other => bail!(
                "{}: model_type '{other}' is not supported (expected bert or gpt2)",
                config_path.display()
            ),
        };
        validate(&config, &config_path)?;
        let num_labels = num_labels(&raw, &config_path)?;

        let paths = weight_files(dir)?;
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            // SAFETY: the file is memory-mapped read-only; like every mmap reader we assume it is
            // not modified while the checkpoint is open.
            let st = unsafe { MmapedSafetensors::new(&path) }
                .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
            for (name, _) in st.tensors() {
                index.insert(name, files.len());
            }
            files.push((path, st));
        }
        let (body, probe) = match &config {
            Config::Bert(_) => ("bert.", "embeddings.word_embeddings.weight"),
            Config::Gpt2(_) => ("transformer.", "wte.weight"),
        };
        let prefix = if index.contains_key(&format!("{body}{probe}")) {
            body
        } else if index.contains_key(probe) {
            ""
        } else {
            bail!(
                "{}: tensor '{body}{probe}' (or '{probe}') is missing: not a {model_type} checkpoint?",
                files_display(&files)
            )
        };
        Ok(Checkpoint {
            name_or_path: name_or_path(dir),
            dir: dir.to_path_buf(),
            config,
            num_labels,
            files,
            index,
            prefix,
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self.config {
            Config::Bert(_) => Architecture::Bert,
            Config::Gpt2(_) => Architecture::Gpt2,
        }
    }

    pub fn max_positions(&self) -> usize {
        match &self.config {
            Config::Bert(c) => c.max_position_embeddings,
            Config::Gpt2(c) => c.n_positions,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.config {
            Config::Bert(c) => c.vocab_size,
            Config::Gpt2(c) => c.vocab_size,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match &self.config {
            Config::Bert(c) => c.hidden_size,
            Config::Gpt2(c) => c.n_embd,
        }
    }

    /// PEFT's defaults for the model type.
    pub fn default_target_modules(&self) -> Vec<String> {
        match self.config {
            Config::Bert(_) => vec!["query".into(), "value".into()],
            Config::Gpt2(_) => vec!["c_attn".into()],
        }
    }

    /// PEFT's `all-linear` for the model type: the names of every linear layer but the
    /// classifier (BERT's `dense` is the attention output, intermediate, output and pooler
    /// layers; GPT-2's Conv1D layers count as linear, as PEFT counts them).
    pub fn all_linear_target_modules(&self) -> Vec<String> {
        let names: &[&str] = match self.config {
            Config::Bert(_) => &["query", "key", "value", "dense"],
            Config::Gpt2(_) => &["c_attn", "c_proj", "c_fc"],
        };
        names.iter().map(|n| n.to_string()).collect()
    }

    /// BERT: `pad_token_id` (default 0). GPT-2 has no pad token: `pad_token_id` if the config
    /// sets one, else eos (50256), which is what the pipeline pads with.
    pub fn pad_token_id(&self) -> u32 {
        match &self.config {
            Config::Bert(c) => c.pad_token_id.unwrap_or(0),
            Config::Gpt2(c) => c.pad_token_id.or(c.eos_token_id).unwrap_or(50256),
        }
    }

    /// From `id2label` (or `num_labels`) in config.json; 2 when absent.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Written as `base_model_name_or_path` in saved adapters: the hub repo id when the folder
    /// is a snapshot in a Hugging Face cache, otherwise the folder as given.
    pub fn name_or_path(&self) -> &str {
        &self.name_or_path
    }

    /// The hub repo id when the folder is a snapshot in a Hugging Face cache (so the model is
    /// known by name), else `None` (a local folder can hold any model).
    pub fn hub_id(&self) -> Option<String> {
        hub_repo_id(&self.dir)
    }

    /// The canonical name of the classification head's module (HF's attribute name).
    pub(crate) fn head_module(&self) -> &'static str {
        match self.config {
            Config::Bert(_) => "classifier",
            Config::Gpt2(_) => "score",
        }
    }

    /// Whether the checkpoint has a trained classification head.
    pub fn has_head(&self) -> bool {
        self.index
            .contains_key(&format!("{}.weight", self.head_module()))
    }

    /// Maps a canonical name ("bert.…", "transformer.…", or a head name) to the file's name.
    fn file_name(&self, canonical: &str) -> String {
        for body in ["bert.", "transformer."] {
            if let Some(rest) = canonical.strip_prefix(body) {
                return format!("{}{rest}", self.prefix);
            }
        }
        canonical.to_string()
    }

    /// Loads a tensor by canonical name, checking its shape, converted to `dtype`.
    pub(crate) fn load(
        &self,
        canonical: &str,
        shape: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let name = self.file_name(canonical);
        let Some(&i) = self.index.get(&name) else {
            bail!("{}: tensor '{name}' is missing", files_display(&self.files))
        };
        let (path, st) = &self.files[i];
        let view = st.get(&name)?;
        if view.shape() != shape {
            bail!(
                "{}: tensor '{name}' has shape {:?}, expected {shape:?}",
                path.display(),
                view.shape()
            )
        }
        let t = st
            .load(&name, device)
            .with_context(|| format!("{}: cannot load tensor '{name}'", path.display()))?;
        if !t.dtype().is_float() {
            bail!(
                "{}: tensor '{name}' has dtype {:?}, expected a float",
                path.display(),
                t.dtype()
            )
        }
        // NaN or inf in a weight turns every output into NaN: refuse it here, by name.
        let converted = t.to_dtype(dtype)?;
        if !all_finite(&converted)? {
            if !all_finite(&t)? {
                bail!(
                    "{}: tensor '{name}' holds NaN or infinite values: the checkpoint is damaged",
                    path.display()
                )
            }
            bail!(
                "{}: tensor '{name}' has values beyond the range of {dtype:?}: use training.dtype \
                 f32 or bf16",
                path.display()
            )
        }
        Ok(converted)
    }
}

/// The number of labels as transformers reads it (`id2label`'s size, else `num_labels`, else
/// 2), which must be 2: the pipeline classifies reviews as negative or positive, and a head
/// with other labels would be read wrongly (logits 0 and 1 of 3) or not at all.
fn num_labels(raw: &serde_json::Value, path: &Path) -> Result<usize> {
    let (n, key) = match (raw.get("id2label"), raw.get("num_labels")) {
        (Some(serde_json::Value::Object(m)), _) if !m.is_empty() => (m.len() as u64, "id2label"),
        (Some(v), _) if !v.is_null() && !v.is_object() => bail!(
            "{}: id2label is {v}, expected an object of label names",
            path.display()
        ),
        (_, Some(v)) if !v.is_null() => match v.as_u64() {
            Some(n) => (n, "num_labels"),
            None => bail!(
                "{}: num_labels is {v}, expected a whole number",
                path.display()
            ),
        },
        _ => (2, "num_labels"),
    };
    if n != 2 {
        bail!(
            "{}: the classification head has {n} labels ({key}); this pipeline classifies \
             reviews as negative or positive and needs a checkpoint with 2 labels (or none: a \
             base model gets a fresh 2-label head)",
            path.display()
        );
    }
    Ok(2)
}

/// Whether every value of `t` is finite (no NaN, no ±inf), on any device and float dtype:
/// x − x is exactly 0 for a finite x and NaN otherwise, and a sum of zeros is exactly 0.
pub fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    if !t.dtype().is_float() || t.elem_count() == 0 {
        return Ok(true);
    }
    #[allow(clippy::eq_op)] // x − x on purpose (see above)
    let sum = (t - t)?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(sum == 0.0)
}

fn validate(config: &Config, path: &Path) -> Result<()> {
    let (hidden, heads, act) = match config {
        Config::Bert(c) => {
            if c.position_embedding_type != "absolute" {
                bail!(
                    "{}: position_embedding_type '{}' is not supported (absolute)",
                    path.display(),
                    c.position_embedding_type
                )
            }
            (c.hidden_size, c.num_attention_heads, &c.hidden_act)
        }
        Config::Gpt2(c) => (c.n_embd, c.n_head, &c.activation_function),
    };
    if heads == 0 || hidden % heads != 0 {
        bail!(
            "{}: hidden size {hidden} is not a multiple of {heads} heads",
            path.display()
        )
    }
    activation(act, path)?;
    Ok(())
}

/// `model.safetensors`, or the shards named by `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(shards::SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(shards::INDEX_FILE);
    if index_path.is_file() {
        let mut paths = Vec::new();
        for shard in shards::shard_names(&index_path)? {
            let p = dir.join(&shard);
            if !p.is_file() {
                bail!("{}: shard {} is missing", index_path.display(), p.display())
            }
            paths.push(p);
        }
        return Ok(paths);
    }
    let others = [
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "tf_model.h5",
        "flax_model.msgpack",
    ];
    match others.iter().find(|f| dir.join(f).exists()) {
        Some(f) => bail!(
            "{}: only {f} is present; convert the checkpoint to safetensors (model.safetensors)",
            dir.display()
        ),
        None => bail!(
            "{}: no model.safetensors or model.safetensors.index.json (weights may not have been \
             downloaded: this machine cannot reach the Hugging Face hub)",
            dir.display()
        ),
    }
}

fn files_display(files: &[(PathBuf, MmapedSafetensors)]) -> String {
    match files {
        [(p, _)] => p.display().to_string(),
        _ => {
            let names: Vec<_> = files.iter().map(|(p, _)| p.display().to_string()).collect();
            names.join(", ")
        }
    }
}

/// `…/models--org--name/snapshots/<rev>` (a Hugging Face cache) → "org/name".
fn hub_repo_id(dir: &Path) -> Option<String> {
    let parts: Vec<_> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect();
    if let [.., repo, snapshots, _rev] = parts.as_slice() {
        if snapshots == "snapshots" {
            if let Some(id) = repo.strip_prefix("models--") {
                return Some(id.replacen("--", "/", 1));
            }
        }
    }
    None
}

fn name_or_path(dir: &Path) -> String {
    hub_repo_id(dir).unwrap_or_else(|| dir.display().to_string())
}

/// Loads the modules of a model from a checkpoint onto a device.
pub(crate) struct Loader<'a> {
    pub ckpt: &'a Checkpoint,
    pub device: &'a Device,
    pub dtype: DType,
}

impl Loader<'_> {
    /// Every tensor but the linear layers' weights: in the weight dtype, except that bf16 on
    /// the CPU keeps them f32 (embeddings, biases, LayerNorms): there bf16 is a GEMM format
    /// for the frozen weights, with f32 activations around it, as PyTorch's autocast.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let dtype = if self.device.is_cpu() && self.dtype == DType::BF16 {
            DType::F32
        } else {
            self.dtype
        };
        self.ckpt.load(name, shape, self.device, dtype)
    }

    /// nn.Linear (weight [out, in]) or, with `conv1d`, GPT-2's Conv1D (weight [in, out]).
    pub fn linear(&self, path: &str, n_in: usize, n_out: usize, conv1d: bool) -> Result<Linear> {
        let shape = if conv1d { [n_in, n_out] } else { [n_out, n_in] };
        let w = self
            .ckpt
            .load(&format!("{path}.weight"), &shape, self.device, self.dtype)?;
        let b = self.tensor(&format!("{path}.bias"), &[n_out])?;
        Ok(Linear::new(path.to_string(), w, Some(b), conv1d)?)
    }

    pub fn norm(&self, path: &str, n: usize, eps: f64) -> Result<Norm> {
        let w = self.tensor(&format!("{path}.weight"), &[n])?;
        let b = self.tensor(&format!("{path}.bias"), &[n])?;
        Ok(Norm::new(path.to_string(), w, b, eps))
    }
}
