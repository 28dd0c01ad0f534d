//! The model: a sequence classifier (a BERT or GPT-2 body and a classification head) with its
//! optional LoRA branches, its forward pass and its parameters (PEFT's `tuners/lora/model.py`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use common::format::thousands;
use common::hash::fnv1a;

use crate::checkpoint::{Checkpoint, Config, Loader};
use crate::export::ExportOptions;
use crate::kernels::Kernels;
use crate::lora::{Part, PartMut};
use crate::ops::{Ctx, KeyMask, MASKED};
use crate::settings::LoraSettings;
use crate::{adapter, bert, export, gpt2, lora};

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

/// A training-mode forward pass's record for the hand-written backward pass: the body's, and for
/// GPT-2 the rows the classifier read and the hidden states' dims.
enum Tape {
    Bert(bert::Tape),
    Gpt2(gpt2::Tape, Tensor, (usize, usize, usize)),
}

/// The classification head, trained in full (PEFT's `modules_to_save`), always f32.
pub(crate) struct Head {
    /// "classifier" (BERT) or "score" (GPT-2, no bias).
    pub(crate) module: &'static str,
    pub(crate) weight: Var,
    pub(crate) bias: Option<Var>,
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

/// A batch's loss and gradients from [`SequenceClassifier::train_grads`].
pub struct BatchGrads {
    /// The batch's mean cross-entropy, an f32 scalar (not scaled).
    pub loss: Tensor,
    /// `loss_scale` times the loss's gradient with respect to each trainable parameter.
    pub grads: Vec<(Var, Tensor)>,
}

impl BatchGrads {
    /// The gradients as candle's `GradStore`, which optimizers and clipping take.
    pub fn into_grad_store(self) -> candle_core::backprop::GradStore {
        let mut store = candle_core::backprop::GradStore::default();
        for (var, grad) in self.grads {
            store.insert(var.as_tensor(), grad);
        }
        store
    }
}

/// A sequence classifier on a loaded checkpoint, optionally with LoRA.
// The crate-visible fields are those `adapter.rs` and `export.rs` read.
pub struct SequenceClassifier {
    pub(crate) arch: Architecture,
    body: Body,
    pub(crate) head: Head,
    pub(crate) lora: Option<LoraSettings>,
    pub(crate) name_or_path: String,
    pub(crate) pad_token_id: u32,
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

    /// Adds LoRA branches to the loaded model (empty targets: the checkpoint's defaults;
    /// [`ALL_LINEAR`](crate::ALL_LINEAR) alone: every linear layer but the head, as PEFT expands it).
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
        } else if s.target_modules == [crate::ALL_LINEAR] {
            // Expanded, as PEFT saves it: the adapter's config lists the names.
            s.target_modules = ckpt.all_linear_target_modules();
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

    /// The checked inputs: ids as u32 (on the device and on the host) and the key mask.
    fn inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<(Tensor, Vec<Vec<u32>>, KeyMask)> {
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
        Ok((ids, host_ids, mask))
    }

    /// The mean cross-entropy of `labels` over the batch, and `loss_scale` times its gradient
    /// with respect to every trainable parameter, from a training-mode pass (dropout seeded by
    /// `dropout_seed`) with the hand-written backward pass: what `forward(…, Mode::Train)`,
    /// `candle_nn::loss::cross_entropy` and candle's `backward` give (tested), without an
    /// autograd graph. None where it does not apply — a merged model, trained biases or LoRA
    /// LayerNorms, `Kernels::Composed`, a device and dtype without the kernels — and the caller
    /// takes the autograd path.
    pub fn train_grads(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        dropout_seed: u64,
        loss_scale: f64,
    ) -> candle_core::Result<Option<BatchGrads>> {
        if !self.train_grads_apply() {
            return Ok(None);
        }
        let (ids, host_ids, mask) = self.inputs(input_ids, attention_mask)?;
        let ctx = Ctx {
            fused: true,
            dropout_seed: Some(dropout_seed),
            detach: true,
            rows: None,
        };
        let (features, tape) = match &self.body {
            Body::Bert(m) => {
                let (features, tape) = m.forward_saving(&ids, &mask, &ctx)?;
                (features, Tape::Bert(tape))
            }
            Body::Gpt2(m) => {
                let (hidden, tape) = m.forward_saving(&ids, &mask, &ctx)?;
                let rows = self.last_tokens(&host_ids, hidden.device())?;
                let dims = hidden.dims3()?;
                let flat = hidden.reshape((dims.0 * dims.1, dims.2))?;
                (flat.index_select(&rows, 0)?, Tape::Gpt2(tape, rows, dims))
            }
        };
        let x = features.to_dtype(DType::F32)?;
        let w = self.head.weight.as_detached_tensor();
        let mut logits = x.matmul(&w.t()?)?;
        if let Some(b) = &self.head.bias {
            logits = logits.broadcast_add(&b.as_detached_tensor())?;
        }
        // Mean cross-entropy, as candle_nn's: −mean(log_softmax(logits)[label]).
        let (b, classes) = logits.dims2()?;
        let labels = labels.to_dtype(DType::U32)?;
        let host: Vec<u32> = labels.to_vec1()?;
        if host.len() != b || host.iter().any(|&l| l as usize >= classes) {
            candle_core::bail!("labels {host:?} for {b} rows of {classes} classes")
        }
        let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?;
        let loss = (picked.sum_all()? * (-1.0 / b as f64))?;
        let mut onehot = vec![0f32; b * classes];
        for (i, &l) in host.iter().enumerate() {
            onehot[i * classes + l as usize] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (b, classes), logits.device())?;
        let dlogits = ((log_p.exp()? - onehot)? * (loss_scale / b as f64))?;
        let mut grads = vec![(self.head.weight.clone(), dlogits.t()?.matmul(&x)?)];
        if let Some(bias) = &self.head.bias {
            grads.push((bias.clone(), dlogits.sum(0)?));
        }
        let dfeatures = dlogits.matmul(&w)?.to_dtype(features.dtype())?;
        match (&self.body, tape) {
            (Body::Bert(m), Tape::Bert(tape)) => m.backward(&tape, &dfeatures, &ctx, &mut grads)?,
            (Body::Gpt2(m), Tape::Gpt2(tape, rows, (b, n, h))) => {
                // The read rows' gradients in place, zero elsewhere.
                let zeros = Tensor::zeros((b * n, h), dfeatures.dtype(), dfeatures.device())?;
                let dhidden = zeros.index_add(&rows, &dfeatures, 0)?.reshape((b, n, h))?;
                m.backward(&tape, &dhidden, &ctx, &mut grads)?
            }
            _ => unreachable!("the tape is the body's"),
        }
        Ok(Some(BatchGrads { loss, grads }))
    }

    /// Whether [`train_grads`](Self::train_grads) computes gradients for this model (else it
    /// returns None).
    pub fn train_grads_apply(&self) -> bool {
        match &self.body {
            Body::Bert(m) => self.kernels == Kernels::Auto && m.has_plain_grad() && m.has_kernels(),
            Body::Gpt2(m) => self.kernels == Kernels::Auto && m.has_plain_grad() && m.has_kernels(),
        }
    }

    /// GPT-2's classifier reads, as HF does, the rightmost token of each row that is not the
    /// pad token (0 for a row of pads): those rows' indices in the flattened [batch · seq].
    fn last_tokens(&self, host_ids: &[Vec<u32>], device: &Device) -> candle_core::Result<Tensor> {
        let rows: Vec<u32> = host_ids
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let last = row
                    .iter()
                    .rposition(|&t| t != self.pad_token_id)
                    .unwrap_or(0);
                (i * row.len() + last) as u32
            })
            .collect();
        Tensor::from_vec(rows, host_ids.len(), device)
    }

    /// input_ids, attention_mask: [batch, seq] u32 (or i64) → logits [batch, num_labels] f32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let (ids, host_ids, mask) = self.inputs(input_ids, attention_mask)?;
        let (b, n) = (mask.batch, mask.seq);
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
                let rows = self.last_tokens(&host_ids, hidden.device())?;
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

    /// `f` on the model with its adapter merged (inference without the LoRA branches, as
    /// evaluate runs it: validation in train), then the unmerged weights restored exactly,
    /// whatever `f` returned. A model whose adapter cannot be merged (`layer_norm`), or that
    /// is merged already, is handed to `f` as it is.
    pub fn with_merged<R>(&mut self, f: impl FnOnce(&Self) -> R) -> candle_core::Result<R> {
        let mergeable = self.lora.as_ref().is_some_and(|l| !l.layer_norm);
        if !mergeable || self.is_merged() {
            return Ok(f(self));
        }
        self.merge()?;
        let out = f(self);
        self.unmerge()?;
        Ok(out)
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

    pub(crate) fn parts(&self) -> Vec<Part<'_>> {
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
