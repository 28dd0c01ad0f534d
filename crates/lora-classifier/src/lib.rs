//! A transformer sequence classifier (HF's BertForSequenceClassification or
//! GPT2ForSequenceClassification) with PEFT-compatible LoRA adapters, on candle.
//!
//! - `checkpoint`: a Hugging Face checkpoint folder (config.json + safetensors).
//! - `bert`, `gpt2`: the model bodies, computed as transformers computes them.
//! - `lora`: frozen layers with LoRA branches, PEFT's target matching and parameter names.
//! - `adapter`: PEFT's adapter format (adapter_config.json + adapter_model.safetensors).
//! - `export`: a merged Hugging Face checkpoint that plain transformers loads.
//! - `ops`, `cpu`: the differentiable building blocks; fused f32 CPU kernels with exact
//!   backward passes, and composed candle ops on other devices and dtypes.
//! - `runtime`: process-wide CPU setup that binaries call first ([`tune_cpu_runtime`]).
//!
//! ```no_run
//! use std::path::Path;
//! use candle_core::{DType, Device, Tensor};
//! use lora_classifier::{Checkpoint, LoraBias, LoraSettings, Mode, SequenceClassifier};
//! # fn main() -> anyhow::Result<()> {
//! lora_classifier::tune_cpu_runtime();
//! let ckpt = Checkpoint::open(Path::new("…/snapshots/<rev>"))?;
//! let lora = LoraSettings {
//!     r: 8, alpha: 32.0, dropout: 0.1, bias: LoraBias::None,
//!     target_modules: vec![], // the model type's default: query, value / c_attn
//!     layer_norm: false, use_rslora: false,
//! };
//! let model = SequenceClassifier::new(&ckpt, Some(&lora), 42, &Device::Cpu, DType::F32)?;
//! println!("{}", model.parameter_counts());
//! let ids = Tensor::new(&[[101u32, 2307, 3185, 102]], &Device::Cpu)?;
//! let mask = Tensor::ones((1, 4), DType::U32, &Device::Cpu)?;
//! let logits = model.forward(&ids, &mask, Mode::Train { dropout_seed: 7 })?;
//! let loss = candle_nn::loss::cross_entropy(&logits, &Tensor::new(&[1u32], &Device::Cpu)?)?;
//! let grads = loss.backward()?;
//! for (_name, var) in model.trainable() {
//!     let _grad = grads.get(&var); // … an optimizer step
//! }
//! model.save_adapter(Path::new("adapter"))?;
//! # Ok(())
//! # }
//! ```

mod adapter;
mod bert;
mod checkpoint;
mod cpu;
mod cuda;
mod export;
mod frozen;
mod gpt2;
mod lora;
mod ops;
#[cfg(test)]
mod ops_tests;
mod runs_on;
mod runtime;
#[cfg(test)]
mod test_util;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use common::format::thousands;
use common::hash::fnv1a;

pub use checkpoint::{all_finite, Checkpoint};
use checkpoint::{Config, Loader};
pub use export::{ExportDtype, ExportOptions, Truncation, EXPORT_FILES, LABELS};
use lora::{Part, PartMut};
use ops::{Ctx, KeyMask, MASKED};
pub use runs_on::{runs_on, FrozenWeights};
pub use runtime::tune_cpu_runtime;

/// LoRA hyper-parameters, as in PEFT's LoraConfig.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub bias: LoraBias,
    /// PEFT's list matching: a module matches when its path equals a name or ends with "." +
    /// name. Empty: the checkpoint's `default_target_modules()` (as PEFT does).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Bert,
    Gpt2,
}

impl Architecture {
    /// transformers' class of the sequence classifier (config.json's `architectures`).
    pub fn hf_classifier(self) -> &'static str {
        match self {
            Architecture::Bert => "BertForSequenceClassification",
            Architecture::Gpt2 => "GPT2ForSequenceClassification",
        }
    }
}

/// How `forward` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dropout off; the result is differentiable (for evaluation losses and gradient checks).
    Eval,
    /// Dropout on, its masks drawn from `dropout_seed` (derive it from the run seed and the
    /// global step: the same seed gives the same masks on any device or thread count).
    Train { dropout_seed: u64 },
    /// Like `Eval` but builds no autograd graph: faster, less memory; `backward` on its output
    /// gives no gradients.
    Inference,
}

/// Which implementation of the building blocks runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The fused kernels of the device: for f32 on the CPU, the CUDA kernels on a GPU (and a
    /// frozen-weight matmul without weight gradients for every other device and dtype).
    #[default]
    Auto,
    /// Stock candle ops everywhere: the reference the kernels are tested against.
    Composed,
}

/// Environment variable that sets the kernels of every model a process builds: `composed`
/// rules the fused kernels out when a result looks wrong; unset or `auto` is the default.
pub const KERNELS_ENV: &str = "IMDB_LORA_KERNELS";

impl Kernels {
    /// The kernels `KERNELS_ENV` asks for (Auto when unset or unrecognised).
    pub fn from_env() -> Self {
        match std::env::var(KERNELS_ENV).as_deref() {
            Ok("composed") => Kernels::Composed,
            _ => Kernels::Auto,
        }
    }
}

/// The code that computes frozen linear layers on this CPU in `precision` ("bf16" or "int8"):
/// "avx512" (AVX512-BF16 / AVX512-VNNI microkernels) or "portable" (f32 GEMMs on the rounded
/// values, on a CPU without them or with `IMDB_LORA_CPU_ISA=portable`). For reports and tests.
pub fn cpu_kernels(precision: &str) -> Option<&'static str> {
    let p = match precision {
        "bf16" => cpu::Precision::Bf16,
        "int8" => cpu::Precision::Int8,
        _ => return None,
    };
    Some(match cpu::Isa::detect(p) {
        cpu::Isa::Avx512 => "avx512",
        cpu::Isa::Portable => "portable",
    })
}

/// Whether this CPU computes bf16 frozen layers with its own instructions (AVX512-BF16), not
/// by rounding to bf16 and multiplying in f32 as the portable code does.
pub fn cpu_has_native_bf16() -> bool {
    cpu::Isa::detect(cpu::Precision::Bf16) == cpu::Isa::Avx512
}

/// Whether this CPU has AMX tiles for bf16 (Intel Xeon since Sapphire Rapids: CPUID leaf 7,
/// EDX bit 22). Our bf16 kernels do not use them yet, and on such a CPU the AVX512-BF16 path is
/// slower than f32 (issue #31), which `training.dtype: auto` takes into account.
pub fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID is available on every x86_64 CPU; leaf 7 is valid when the maximum
        // basic leaf (leaf 0's EAX) is at least 7. (A safe fn in newer Rust than our MSRV, 1.89,
        // where it is unsafe: hence the allowance.)
        #[allow(unused_unsafe)]
        unsafe {
            use std::arch::x86_64::__cpuid_count;
            if __cpuid_count(0, 0).eax >= 7 {
                return __cpuid_count(7, 0).edx & (1 << 22) != 0;
            }
        }
    }
    false
}

/// Environment variable that makes the CPU's bf16 and int8 layers run the portable code
/// (`portable`) as on a CPU without AVX512-BF16 / AVX512-VNNI.
pub const CPU_ISA_ENV: &str = cpu::ISA_ENV;

/// Parameter counts as PEFT's `print_trainable_parameters` reports them: "all" counts every
/// parameter of the PEFT model, i.e. the base model (with its original head), the LoRA
/// matrices and the trainable copy of the head (`modules_to_save`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCounts {
    pub trainable: usize,
    pub all: usize,
}

impl fmt::Display for ParameterCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.all.max(1) as f64;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.all)
        )
    }
}

enum Body {
    Bert(bert::Bert),
    Gpt2(gpt2::Gpt2),
}

/// The classification head, trained in full (PEFT's `modules_to_save`), always f32.
struct Head {
    /// "classifier" (BERT) or "score" (GPT-2, no bias).
    module: &'static str,
    weight: Var,
    bias: Option<Var>,
}

impl Head {
    fn load(ckpt: &Checkpoint, seed: u64, device: &Device) -> Result<Self> {
        let (module, hidden, labels) = (ckpt.head_module(), ckpt.hidden_size(), ckpt.num_labels());
        let has_bias = ckpt.architecture() == Architecture::Bert;
        let f32_tensor = |name: &str, shape: &[usize]| ckpt.load(name, shape, device, DType::F32);
        let (weight, bias) = if ckpt.has_head() {
            let w = f32_tensor(&format!("{module}.weight"), &[labels, hidden])?;
            let b = has_bias
                .then(|| f32_tensor(&format!("{module}.bias"), &[labels]))
                .transpose()?;
            (w, b)
        } else {
            // A base model: a fresh head as HF initialises it.
            let std = match &ckpt.config {
                Config::Bert(c) => c.initializer_range,
                Config::Gpt2(c) => c.initializer_range,
            };
            let w = lora::normal((labels, hidden), std, seed ^ fnv1a(module), device)?;
            let b = has_bias
                .then(|| Tensor::zeros(labels, DType::F32, device))
                .transpose()?;
            (w, b)
        };
        Ok(Self {
            module,
            weight: Var::from_tensor(&weight)?,
            bias: bias.map(|b| Var::from_tensor(&b)).transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> candle_core::Result<Tensor> {
        let y = x
            .to_dtype(DType::F32)?
            .matmul(&ctx.param(&self.weight).t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&ctx.param(b)),
            None => Ok(y),
        }
    }

    fn elem_count(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }
}

/// A sequence classifier on a loaded checkpoint, optionally with LoRA.
pub struct SequenceClassifier {
    arch: Architecture,
    body: Body,
    head: Head,
    lora: Option<LoraSettings>,
    name_or_path: String,
    pad_token_id: u32,
    vocab_size: usize,
    max_positions: usize,
    kernels: Kernels,
}

impl SequenceClassifier {
    /// `seed` initialises a fresh head (when the checkpoint has none) and the LoRA A matrices.
    /// With `lora = None` the base model is frozen and only the head trains.
    pub fn new(
        ckpt: &Checkpoint,
        lora: Option<&LoraSettings>,
        seed: u64,
        device: &Device,
        weight_dtype: DType,
    ) -> Result<Self> {
        if !weight_dtype.is_float() {
            bail!("weight dtype must be a float type, got {weight_dtype:?}")
        }
        let loader = Loader {
            ckpt,
            device,
            dtype: weight_dtype,
        };
        let body = match &ckpt.config {
            Config::Bert(c) => Body::Bert(bert::Bert::load(&loader, c)?),
            Config::Gpt2(c) => Body::Gpt2(gpt2::Gpt2::load(&loader, c)?),
        };
        let mut model = Self {
            arch: ckpt.architecture(),
            body,
            head: Head::load(ckpt, seed, device)?,
            lora: None,
            name_or_path: ckpt.name_or_path().to_string(),
            pad_token_id: ckpt.pad_token_id(),
            vocab_size: ckpt.vocab_size(),
            max_positions: ckpt.max_positions(),
            kernels: Kernels::from_env(),
        };
        if let Some(s) = lora {
            model.add_lora(ckpt, s, seed)?;
        }
        Ok(model)
    }

    /// Adds LoRA branches to the loaded model (empty targets: the checkpoint's defaults).
    /// Separate from loading, so that an adapter's errors are told from the checkpoint's.
    pub(crate) fn add_lora(
        &mut self,
        ckpt: &Checkpoint,
        s: &LoraSettings,
        seed: u64,
    ) -> Result<()> {
        let mut s = s.clone();
        if s.target_modules.is_empty() {
            s.target_modules = ckpt.default_target_modules();
        }
        let arch = self.arch_name();
        lora::apply(self.parts_mut(), &s, seed, arch)?;
        self.lora = Some(s);
        Ok(())
    }

    /// Loads a PEFT LoRA adapter folder (ours or PEFT's) onto the checkpoint.
    pub fn load_adapter(
        ckpt: &Checkpoint,
        adapter_dir: &Path,
        device: &Device,
        weight_dtype: DType,
    ) -> Result<Self> {
        adapter::load(ckpt, adapter_dir, device, weight_dtype)
    }

    /// Writes `adapter_config.json` + `adapter_model.safetensors` as PEFT's save_pretrained
    /// does; the folder is replaced whole, never left half-written.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        adapter::save(self, dir)
    }

    /// Writes a merged Hugging Face checkpoint of this model into `dir` (replaced whole, never
    /// left half-written): config.json, model.safetensors with the LoRA updates folded in and
    /// the head, and the tokenizer files of `ckpt`, the checkpoint the model was loaded from.
    /// Fails with `layer_norm` LoRA, which cannot be merged.
    pub fn export_merged(
        &self,
        ckpt: &Checkpoint,
        dir: &Path,
        options: ExportOptions,
    ) -> Result<()> {
        export::export(self, ckpt, dir, options)
    }

    /// `export_merged`'s files, written into `out`: an existing folder the caller publishes
    /// whole (a stage's staging folder).
    pub fn write_export(
        &self,
        ckpt: &Checkpoint,
        out: &Path,
        options: ExportOptions,
    ) -> Result<()> {
        export::write_files(self, ckpt, out, options)
    }

    /// input_ids, attention_mask: [batch, seq] u32 (or i64) → logits [batch, num_labels] f32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let (b, n) = input_ids.dims2()?;
        if attention_mask.dims() != [b, n] {
            candle_core::bail!(
                "attention_mask {:?} does not match input_ids [{b}, {n}]",
                attention_mask.dims()
            )
        }
        if n == 0 || n > self.max_positions {
            candle_core::bail!("sequence length {n} is not in 1..={}", self.max_positions)
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        let host_ids = ids.to_vec2::<u32>()?;
        if let Some(&bad) = host_ids
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            candle_core::bail!(
                "token id {bad} is out of the vocabulary (size {})",
                self.vocab_size
            )
        }
        let bias: Vec<f32> = attention_mask
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|m| if m == 0 { MASKED } else { 0.0 })
            .collect();
        let mask = KeyMask {
            tensor: Tensor::from_slice(&bias, (b, n), input_ids.device())?,
            bias: Arc::new(bias),
            batch: b,
            seq: n,
        };
        let ctx = Ctx {
            fused: self.kernels == Kernels::Auto,
            dropout_seed: match mode {
                Mode::Train { dropout_seed } => Some(dropout_seed),
                _ => None,
            },
            detach: mode == Mode::Inference,
            rows: None,
        };
        let features = match &self.body {
            Body::Bert(m) => m.forward(&ids, &mask, &ctx)?,
            Body::Gpt2(m) => {
                let hidden = m.forward(&ids, &mask, &ctx)?;
                // HF: the rightmost token that is not the pad token (0 for a row of pads).
                let rows: Vec<u32> = host_ids
                    .iter()
                    .enumerate()
                    .map(|(i, row)| {
                        let last = row
                            .iter()
                            .rposition(|&t| t != self.pad_token_id)
                            .unwrap_or(0);
                        (i * n + last) as u32
                    })
                    .collect();
                let rows = Tensor::from_vec(rows, b, hidden.device())?;
                hidden
                    .reshape((b * n, hidden.dim(2)?))?
                    .index_select(&rows, 0)?
            }
        };
        self.head.forward(&features, &ctx)
    }

    /// Trainable parameters by PEFT's in-memory names (e.g.
    /// "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight",
    /// "base_model.model.classifier.modules_to_save.default.weight"), in PEFT's order.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for part in self.parts() {
            match part {
                Part::Linear(l) => l.trainable(&mut out),
                Part::Norm(n) => n.trainable(&mut out),
                Part::Tensor(..) => {}
            }
        }
        let p = format!(
            "base_model.model.{}.modules_to_save.default",
            self.head.module
        );
        out.push((format!("{p}.weight"), self.head.weight.clone()));
        if let Some(b) = &self.head.bias {
            out.push((format!("{p}.bias"), b.clone()));
        }
        out
    }

    /// Counts as PEFT's print_trainable_parameters (Display prints its line).
    pub fn parameter_counts(&self) -> ParameterCounts {
        let (mut all, mut trainable) = (0, 0);
        for part in self.parts() {
            let (a, t) = match part {
                Part::Linear(l) => l.counts(),
                Part::Norm(n) => n.counts(),
                Part::Tensor(_, t) => (t.elem_count(), 0),
            };
            all += a;
            trainable += t;
        }
        let head = self.head.elem_count();
        // PEFT keeps the original head (frozen) beside its trainable copy.
        let copies = if self.lora.is_some() { 2 } else { 1 };
        ParameterCounts {
            trainable: trainable + head,
            all: all + copies * head,
        }
    }

    /// Folds s·B·A into the frozen weights (fast inference); LoRA branches are then skipped,
    /// so the LoRA matrices get no gradients until `unmerge`. Fails with `layer_norm`.
    pub fn merge(&mut self) -> candle_core::Result<()> {
        for part in self.parts_mut() {
            if let PartMut::Linear(l) = part {
                l.merge()?;
            }
        }
        Ok(())
    }

    /// Restores the unmerged weights exactly.
    pub fn unmerge(&mut self) -> candle_core::Result<()> {
        for part in self.parts_mut() {
            if let PartMut::Linear(l) = part {
                l.unmerge()?;
            }
        }
        Ok(())
    }

    /// Inference in int8 on the CPU (call it after `merge`): every frozen linear layer's
    /// weight quantized per output channel, its input per row, the products on AVX512-VNNI
    /// where the CPU has it (`vpdpbusd`), as ONNX Runtime's dynamic quantization. There is no
    /// backward pass through the quantized layers; the fused kernels (`Kernels::Auto`) only.
    pub fn quantize_int8(&mut self) -> candle_core::Result<()> {
        for part in self.parts_mut() {
            if let PartMut::Linear(l) = part {
                l.quantize_int8()?;
            }
        }
        Ok(())
    }

    pub fn is_merged(&self) -> bool {
        self.parts()
            .iter()
            .any(|p| matches!(p, Part::Linear(l) if l.is_merged()))
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    pub fn lora_settings(&self) -> Option<&LoraSettings> {
        self.lora.as_ref()
    }

    pub fn num_labels(&self) -> usize {
        self.head.weight.dims()[0]
    }

    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    fn arch_name(&self) -> &'static str {
        match self.arch {
            Architecture::Bert => "bert",
            Architecture::Gpt2 => "gpt2",
        }
    }

    fn parts(&self) -> Vec<Part<'_>> {
        match &self.body {
            Body::Bert(m) => m.parts(),
            Body::Gpt2(m) => m.parts(),
        }
    }

    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        match &mut self.body {
            Body::Bert(m) => m.parts_mut(),
            Body::Gpt2(m) => m.parts_mut(),
        }
    }
}
