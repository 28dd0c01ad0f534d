//! The models `bench` and `check-kernels` run on: a Hugging Face checkpoint (hub id through the
//! cache, or a folder), or a randomly initialised BERT of a standard shape. Throughput does not
//! depend on the weights' values, so the random ones stand in for checkpoints that cannot be had
//! offline (bert-base).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lora_classifier::{Checkpoint, LoraBias, LoraSettings};
use rand::{Rng, SeedableRng};

/// all-MiniLM-L6-v2, the pipeline's default model.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// A BERT shape: (hidden, layers, heads, intermediate).
struct Shape(usize, usize, usize, usize);

fn random_shape(name: &str) -> Option<Shape> {
    match name {
        // all-MiniLM-L6-v2's shape, for machines that do not have its weights.
        "minilm-shape" => Some(Shape(384, 6, 12, 1536)),
        "bert-base" => Some(Shape(768, 12, 12, 3072)),
        "bert-large" => Some(Shape(1024, 24, 16, 4096)),
        _ => None,
    }
}

/// An opened checkpoint; a random one lives in a temporary folder as long as this.
pub struct Model {
    pub ckpt: Checkpoint,
    pub name: String,
    _dir: Option<tempfile::TempDir>,
}

/// `minilm`, `minilm-shape`, `bert-base`, `bert-large` (random weights), a hub model id or a
/// checkpoint folder.
pub fn open(spec: &str) -> Result<Model> {
    if let Some(shape) = random_shape(spec) {
        let dir = tempfile::tempdir()?;
        write_random_bert(dir.path(), &shape, 0)?;
        let ckpt = Checkpoint::open(dir.path())?;
        return Ok(Model {
            ckpt,
            name: format!("{spec} (random weights)"),
            _dir: Some(dir),
        });
    }
    let source = if spec == "minilm" { MINILM } else { spec };
    let dir = hub::model_dir(
        source,
        "main",
        hub::Needs {
            weights: true,
            tokenizer: false,
        },
    )
    .with_context(|| format!("model {spec}"))?;
    Ok(Model {
        ckpt: Checkpoint::open(&dir)?,
        name: spec.to_string(),
        _dir: None,
    })
}

/// LoRA as the pipeline's defaults: r 8, alpha 32, dropout 0.1 on query and value (PEFT's
/// BERT default) — the setting the PyTorch + PEFT references use too.
pub fn lora() -> LoraSettings {
    LoraSettings {
        r: 8,
        alpha: 32.0,
        dropout: 0.1,
        bias: LoraBias::None,
        target_modules: vec![],
        layer_norm: false,
        use_rslora: false,
    }
}

/// Random token ids in [1000, vocab) (clear of BERT's special tokens where the vocabulary is
/// large enough), [batch, seq], and random 0/1 labels.
pub fn random_batch(
    vocab: usize,
    batch: usize,
    seq: usize,
    seed: u64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let low = if vocab > 2000 { 1000 } else { 1 };
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(low..vocab as u32))
        .collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..2)).collect();
    Ok((
        Tensor::from_vec(ids, (batch, seq), device)?,
        Tensor::from_vec(labels, batch, device)?,
    ))
}

/// A BERT checkpoint (config.json + model.safetensors, f32) of the given shape with weights
/// drawn as HF initialises them: U(±0.02·√3) (std 0.02) for matrices, LayerNorm 1 and 0.
fn write_random_bert(dir: &Path, s: &Shape, seed: u64) -> Result<()> {
    let Shape(h, layers, heads, inter) = *s;
    if h % heads != 0 {
        bail!("hidden size {h} is not a multiple of {heads} heads")
    }
    let (vocab, positions) = (30522, 512);
    let config = serde_json::json!({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": vocab,
        "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": inter, "hidden_act": "gelu", "max_position_embeddings": positions,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bound = 0.02f32 * 3f32.sqrt();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut matrix = |name: String, rows: usize, cols: usize| -> Result<()> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        tensors.insert(name, Tensor::from_vec(v, (rows, cols), &Device::Cpu)?);
        Ok(())
    };
    let mut vectors: Vec<(String, usize, f32)> = Vec::new();
    matrix("embeddings.word_embeddings.weight".into(), vocab, h)?;
    matrix("embeddings.position_embeddings.weight".into(), positions, h)?;
    matrix("embeddings.token_type_embeddings.weight".into(), 2, h)?;
    vectors.push(("embeddings.LayerNorm.weight".into(), h, 1.0));
    vectors.push(("embeddings.LayerNorm.bias".into(), h, 0.0));
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        let linears = [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", inter, h),
            ("output.dense", h, inter),
        ];
        for (name, out, n_in) in linears {
            matrix(format!("{p}.{name}.weight"), out, n_in)?;
            vectors.push((format!("{p}.{name}.bias"), out, 0.0));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            vectors.push((format!("{p}.{norm}.weight"), h, 1.0));
            vectors.push((format!("{p}.{norm}.bias"), h, 0.0));
        }
    }
    matrix("pooler.dense.weight".into(), h, h)?;
    vectors.push(("pooler.dense.bias".into(), h, 0.0));
    for (name, n, value) in vectors {
        tensors.insert(name, Tensor::full(value, n, &Device::Cpu)?);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

/// `training.dtype`-style names.
pub fn dtype_name(dtype: DType) -> &'static str {
    inference::device::dtype_name(dtype)
}
