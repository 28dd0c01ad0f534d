//! Frozen layers with PEFT's LoRA: h = W x + b + s · B(A(dropout(x))), s = alpha / r
//! (alpha / √r with rsLoRA), and parameter naming as PEFT names things in memory.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use common::hash::fnv1a;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::activation::Act;
use crate::dropout_mask::DropKey;
use crate::ops::{self, Ctx, Frozen, Isa, PackedLinear, Precision};
use crate::{LoraBias, LoraSettings};

/// Epsilon of the optional LoRA LayerNorm (PyTorch's nn.LayerNorm default).
const LORA_NORM_EPS: f64 = 1e-5;

/// A parameter that is frozen (in the weight dtype) or trainable (an f32 `Var`).
pub(crate) enum Param {
    Frozen(Tensor),
    Trainable(Var),
}

impl Param {
    pub fn tensor(&self, ctx: &Ctx) -> Tensor {
        match self {
            Param::Frozen(t) => t.clone(),
            Param::Trainable(v) => ctx.param(v),
        }
    }

    /// The value, outside any autograd graph.
    pub fn detached(&self) -> Tensor {
        match self {
            Param::Frozen(t) => t.clone(),
            Param::Trainable(v) => v.as_detached_tensor(),
        }
    }

    pub fn elem_count(&self) -> usize {
        match self {
            Param::Frozen(t) => t.elem_count(),
            Param::Trainable(v) => v.elem_count(),
        }
    }

    fn make_trainable(&mut self) -> Result<()> {
        if let Param::Frozen(t) = self {
            *self = Param::Trainable(Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
        Ok(())
    }

    fn var(&self) -> Option<&Var> {
        match self {
            Param::Trainable(v) => Some(v),
            Param::Frozen(_) => None,
        }
    }
}

/// The LoRA branch of one layer.
pub(crate) struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    /// Our extension (the project's seed notebook has it, PEFT does not): a LayerNorm over the
    /// branch output B(A(x)) before scaling, weight 1 and bias 0 at init, trainable. Saved as
    /// `<module>.lora_ln.weight` / `<module>.lora_ln.bias` (PEFT would ignore these keys).
    pub norm: Option<(Var, Var)>,
}

impl Lora {
    /// s·B·A, the update merging adds to the weight ([out, in]; transposed for Conv1D).
    fn delta(&self, conv1d: bool) -> candle_core::Result<Tensor> {
        let delta = (self
            .b
            .as_detached_tensor()
            .matmul(&self.a.as_detached_tensor())?
            * self.scale)?;
        if conv1d {
            delta.t()
        } else {
            Ok(delta)
        }
    }

    fn forward(&self, x: &Tensor, site: u64, ctx: &Ctx) -> candle_core::Result<Tensor> {
        let x = ops::dropout(
            &x.to_dtype(DType::F32)?,
            ctx.dropout(self.dropout, site),
            ctx,
        )?;
        let mut dims = x.dims().to_vec();
        let x = x.contiguous()?.flatten_to(dims.len() - 2)?;
        let h = x.matmul(&ctx.param(&self.a).t()?)?;
        let h = match &self.norm {
            Some((w, b)) => {
                let h = h.matmul(&ctx.param(&self.b).t()?)?;
                (ops::layer_norm(&h, &ctx.param(w), &ctx.param(b), LORA_NORM_EPS, ctx)?
                    * self.scale)?
            }
            // The scale on the small [out, r] matrix, not on the [tokens, out] result.
            None => h.matmul(&(ctx.param(&self.b) * self.scale)?.t()?)?,
        };
        *dims.last_mut().unwrap() = h.dim(1)?;
        h.reshape(dims)
    }
}

/// nn.Linear (weight [out, in]) or GPT-2's Conv1D (weight [in, out]), frozen, maybe with LoRA.
pub(crate) struct Linear {
    /// HF module path, e.g. "bert.encoder.layer.0.attention.self.query".
    pub path: String,
    weight: Tensor,
    conv1d: bool,
    pub bias: Option<Param>,
    pub lora: Option<Lora>,
    /// The unmerged weight while the LoRA update is merged into `weight`.
    unmerged: Option<Tensor>,
    /// Dropout site of the LoRA branch.
    site: u64,
    /// The format the CPU kernels compute `weight` in, when not f32: bf16 for a bf16 weight on
    /// the CPU, int8 after `quantize_int8`.
    precision: Option<Precision>,
    /// `weight` packed in that format (re-packed whenever `weight` changes).
    packed: Option<Arc<PackedLinear>>,
}

impl Linear {
    pub fn new(
        path: String,
        weight: Tensor,
        bias: Option<Tensor>,
        conv1d: bool,
    ) -> candle_core::Result<Self> {
        let bias = bias.map(Param::Frozen);
        let site = fnv1a(&path);
        let precision =
            (weight.device().is_cpu() && weight.dtype() == DType::BF16).then_some(Precision::Bf16);
        let mut linear = Self {
            path,
            weight,
            conv1d,
            bias,
            lora: None,
            unmerged: None,
            site,
            precision,
            packed: None,
        };
        linear.repack()?;
        Ok(linear)
    }

    /// Packs `weight` for the CPU kernels of `precision` (none for f32).
    fn repack(&mut self) -> candle_core::Result<()> {
        self.packed = match self.precision {
            None => None,
            Some(p) => {
                let w = self
                    .weight
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let (n_out, n_in, c) = (self.out_features(), self.in_features(), self.conv1d);
                let isa = Isa::detect(p);
                Some(Arc::new(match p {
                    Precision::Bf16 => PackedLinear::bf16(&w, n_out, n_in, c, isa)?,
                    Precision::Int8 => {
                        PackedLinear::int8(&w, n_out, n_in, c, isa).map_err(|e| {
                            candle_core::Error::Msg(format!("{}.weight: {e}", self.path))
                        })?
                    }
                }))
            }
        };
        Ok(())
    }

    /// From now on the CPU kernels compute this layer with its weight (merged or not) in
    /// per-channel int8 and activations quantized per row: inference only.
    pub fn quantize_int8(&mut self) -> candle_core::Result<()> {
        if !self.weight.device().is_cpu() {
            candle_core::bail!("{}: int8 weights run on the CPU only", self.path)
        }
        self.precision = Some(Precision::Int8);
        self.repack()
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[usize::from(!self.conv1d)]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[usize::from(self.conv1d)]
    }

    pub fn forward(&self, x: &Tensor, act: Act, ctx: &Ctx) -> candle_core::Result<Tensor> {
        let lora = self.lora.as_ref().filter(|_| self.unmerged.is_none());
        let (frozen_bias, trained_bias) = match &self.bias {
            Some(Param::Frozen(t)) => (Some(t), None),
            Some(Param::Trainable(v)) => (None, Some(ctx.param(v))),
            None => (None, None),
        };
        let base = Frozen {
            b: frozen_bias,
            ..self.frozen()
        };
        if lora.is_none() && trained_bias.is_none() {
            return ops::linear(x, base, act, ctx);
        }
        // The fused LoRA op where it applies (no LayerNorm on the branch), else composed.
        let fused = match lora.filter(|l| l.norm.is_none()) {
            Some(l) => {
                let (a, b) = (ctx.param(&l.a), ctx.param(&l.b));
                let key = ctx.dropout(l.dropout, self.site);
                ops::lora_linear(x, base, &a, &b, l.scale, key, ctx)?
            }
            None => None,
        };
        let mut y = match (fused, lora) {
            (Some(y), _) => y,
            (None, Some(l)) => {
                let y = ops::linear(x, base, Act::None, ctx)?;
                let delta = l.forward(x, self.site, ctx)?.to_dtype(y.dtype())?;
                (y + delta)?
            }
            (None, None) => ops::linear(x, base, Act::None, ctx)?,
        };
        if let Some(b) = trained_bias {
            y = y.broadcast_add(&b.to_dtype(y.dtype())?)?;
        }
        ops::activation(&y, act, ctx)
    }

    /// The frozen weight (and bias, when frozen) as the ops take it.
    fn frozen(&self) -> Frozen<'_> {
        let b = match &self.bias {
            Some(Param::Frozen(t)) => Some(t),
            _ => None,
        };
        Frozen {
            w: &self.weight,
            b,
            conv1d: self.conv1d,
            packed: self.packed.as_ref(),
        }
    }

    /// Whether the hand-written backward pass ([`Linear::grad`]) covers this layer: no trained
    /// bias, no LayerNorm on the LoRA branch, not merged.
    pub fn has_plain_grad(&self) -> bool {
        !matches!(self.bias, Some(Param::Trainable(_)))
            && self.lora.as_ref().is_none_or(|l| l.norm.is_none())
            && self.unmerged.is_none()
    }

    /// The hand-written backward pass of `forward(x, Act::None, ctx)` for the output gradient
    /// `dy`: x's gradient (when `input_grad`), the LoRA matrices' pushed to `grads`.
    pub fn grad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        input_grad: bool,
        ctx: &Ctx,
        grads: &mut Vec<(Var, Tensor)>,
    ) -> candle_core::Result<Option<Tensor>> {
        if !self.has_plain_grad() {
            candle_core::bail!(
                "{}: no hand-written backward pass for this layer",
                self.path
            )
        }
        let Some(l) = &self.lora else {
            return input_grad.then(|| self.frozen().input_grad(dy)).transpose();
        };
        let (a, b) = (l.a.as_detached_tensor(), l.b.as_detached_tensor());
        let key = ctx.dropout(l.dropout, self.site);
        let g = ops::lora_linear_grad(x, self.frozen(), &a, &b, l.scale, key, dy, input_grad, ctx)?;
        grads.push((l.a.clone(), g.da));
        grads.push((l.b.clone(), g.db));
        Ok(g.dx)
    }

    /// Adds a LoRA branch: A Kaiming-uniform as PEFT does (torch's kaiming_uniform_ with
    /// a = √5, i.e. U(±1/√in)), B zero.
    pub fn add_lora(&mut self, s: &LoraSettings, seed: u64) -> Result<()> {
        let (n_in, n_out, r) = (self.in_features(), self.out_features(), s.r);
        // B·A has rank at most min(in, out): a larger r adds nothing, and r comes from user
        // input (config, adapter_config.json), so it is bounded before it sizes an allocation.
        if r > n_in.min(n_out) {
            bail!(
                "LoRA rank r = {r} is too large for layer {} ({n_in} inputs, {n_out} outputs): \
                 r can be at most {}",
                self.path,
                n_in.min(n_out)
            )
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(&self.path));
        let bound = 1.0 / (n_in as f32).sqrt();
        let a: Vec<f32> = (0..r * n_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let dev = self.weight.device();
        let norm = match s.layer_norm {
            true => Some((
                Var::ones(n_out, DType::F32, dev)?,
                Var::zeros(n_out, DType::F32, dev)?,
            )),
            false => None,
        };
        self.lora = Some(Lora {
            a: Var::from_tensor(&Tensor::from_vec(a, (r, n_in), dev)?)?,
            b: Var::zeros((n_out, r), DType::F32, dev)?,
            scale: s.scale(),
            dropout: s.dropout,
            norm,
        });
        Ok(())
    }

    /// W ← W + s·B·A (transposed for Conv1D); the unmerged weight is kept for `unmerge`.
    pub fn merge(&mut self) -> candle_core::Result<()> {
        let Some(lora) = self.lora.as_ref().filter(|_| self.unmerged.is_none()) else {
            return Ok(());
        };
        if lora.norm.is_some() {
            candle_core::bail!(
                "{}: a LoRA branch with layer_norm cannot be merged",
                self.path
            )
        }
        let delta = lora.delta(self.conv1d)?;
        let dtype = self.weight.dtype();
        let merged = (self.weight.to_dtype(DType::F32)? + delta)?
            .to_dtype(dtype)?
            .contiguous()?;
        self.unmerged = Some(std::mem::replace(&mut self.weight, merged));
        self.repack()
    }

    pub fn unmerge(&mut self) -> candle_core::Result<()> {
        if let Some(w) = self.unmerged.take() {
            self.weight = w;
            self.repack()?;
        }
        Ok(())
    }

    pub fn is_merged(&self) -> bool {
        self.unmerged.is_some()
    }

    /// `<path>.weight` with the LoRA update folded in (computed in f32 from the unmerged
    /// weight, whether or not the layer is merged) and `<path>.bias`, in f32, as HF names them.
    pub fn merged_tensors(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        let base = self.unmerged.as_ref().unwrap_or(&self.weight);
        let mut weight = base.to_dtype(DType::F32)?;
        if let Some(lora) = &self.lora {
            if lora.norm.is_some() {
                bail!(
                    "{}: a LoRA branch with layer_norm (lora.layer_norm) cannot be merged into \
                     the weights",
                    self.path
                )
            }
            weight = (weight + lora.delta(self.conv1d)?)?;
        }
        out.push((format!("{}.weight", self.path), weight.contiguous()?));
        if let Some(b) = &self.bias {
            out.push((
                format!("{}.bias", self.path),
                b.detached().to_dtype(DType::F32)?,
            ));
        }
        Ok(())
    }

    fn peft_path(&self) -> String {
        format!("base_model.model.{}", self.path)
    }

    /// Trainable parameters under PEFT's in-memory names, in PEFT's order.
    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        let p = self.peft_path();
        if let Some(v) = self.bias.as_ref().and_then(Param::var) {
            // PEFT wraps a LoRA layer's original module as `base_layer`.
            let name = if self.lora.is_some() {
                format!("{p}.base_layer.bias")
            } else {
                format!("{p}.bias")
            };
            out.push((name, v.clone()));
        }
        if let Some(l) = &self.lora {
            out.push((format!("{p}.lora_A.default.weight"), l.a.clone()));
            out.push((format!("{p}.lora_B.default.weight"), l.b.clone()));
            if let Some((w, b)) = &l.norm {
                out.push((format!("{p}.lora_ln.default.weight"), w.clone()));
                out.push((format!("{p}.lora_ln.default.bias"), b.clone()));
            }
        }
    }

    /// (all, trainable) parameter counts as PEFT counts them.
    pub fn counts(&self) -> (usize, usize) {
        let weight = self.unmerged.as_ref().unwrap_or(&self.weight).elem_count();
        let bias = self.bias.as_ref().map_or(0, Param::elem_count);
        let lora = self.lora.as_ref().map_or(0, |l| {
            l.a.elem_count()
                + l.b.elem_count()
                + l.norm
                    .as_ref()
                    .map_or(0, |(w, b)| w.elem_count() + b.elem_count())
        });
        let trainable_bias = if self.bias.as_ref().and_then(Param::var).is_some() {
            bias
        } else {
            0
        };
        (weight + bias + lora, lora + trainable_bias)
    }
}

/// A frozen LayerNorm (its bias may be made trainable by `bias = all`).
pub(crate) struct Norm {
    pub path: String,
    weight: Tensor,
    pub bias: Param,
    eps: f64,
}

impl Norm {
    pub fn new(path: String, weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            path,
            weight,
            bias: Param::Frozen(bias),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias.tensor(ctx), self.eps, ctx)
    }

    /// Whether the hand-written backward pass covers this LayerNorm: its bias is frozen.
    pub fn has_plain_grad(&self) -> bool {
        self.bias.var().is_none()
    }

    /// The hand-written backward pass of `forward`: x's gradient.
    pub fn grad(&self, x: &Tensor, dy: &Tensor, ctx: &Ctx) -> candle_core::Result<Tensor> {
        let b = self.bias.detached();
        ops::layer_norm_grad(x, &self.weight, &b, self.eps, dy, ctx)
    }

    /// The hand-written backward pass of `forward_add`: (dx, dresidual).
    pub fn grad_add(
        &self,
        x: &Tensor,
        key: Option<DropKey>,
        residual: &Tensor,
        dy: &Tensor,
        ctx: &Ctx,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let b = self.bias.detached();
        ops::add_layer_norm_grad(x, key, residual, &self.weight, &b, self.eps, dy, ctx)
    }

    /// LayerNorm(dropout(x) + residual).
    pub fn forward_add(
        &self,
        x: &Tensor,
        key: Option<DropKey>,
        residual: &Tensor,
        ctx: &Ctx,
    ) -> candle_core::Result<Tensor> {
        ops::add_layer_norm(
            x,
            key,
            residual,
            &self.weight,
            &self.bias.tensor(ctx),
            self.eps,
            ctx,
        )
    }

    /// `<path>.weight` and `<path>.bias` (trained or not), in f32, as HF names them.
    pub fn tensors(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        let bias = self.bias.detached().to_dtype(DType::F32)?;
        out.push((
            format!("{}.weight", self.path),
            self.weight.to_dtype(DType::F32)?,
        ));
        out.push((format!("{}.bias", self.path), bias));
        Ok(())
    }

    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        if let Some(v) = self.bias.var() {
            out.push((format!("base_model.model.{}.bias", self.path), v.clone()));
        }
    }

    pub fn counts(&self) -> (usize, usize) {
        let b = self.bias.elem_count();
        (
            self.weight.elem_count() + b,
            if self.bias.var().is_some() { b } else { 0 },
        )
    }
}

/// The modules of a model body in PEFT's `named_parameters` order.
pub(crate) enum Part<'a> {
    Linear(&'a Linear),
    Norm(&'a Norm),
    /// A frozen tensor (embeddings) and its Hugging Face name.
    Tensor(&'static str, &'a Tensor),
}

pub(crate) enum PartMut<'a> {
    Linear(&'a mut Linear),
    Norm(&'a mut Norm),
}

/// PEFT's matching for a list of target names: the module path equals the name or ends with
/// "." + name (so `dense` hits every `….dense`, the pooler's included).
pub(crate) fn matches(path: &str, target: &str) -> bool {
    path == target || path.strip_suffix(target).is_some_and(|p| p.ends_with('.'))
}

/// Adds LoRA to the matching layers and marks the biases that `bias` trains.
pub(crate) fn apply(
    parts: Vec<PartMut<'_>>,
    s: &LoraSettings,
    seed: u64,
    arch: &str,
) -> Result<()> {
    if s.r == 0 {
        bail!("LoRA r must be at least 1")
    }
    if !(0.0..1.0).contains(&s.dropout) {
        bail!("LoRA dropout must be in [0, 1), got {}", s.dropout)
    }
    if !s.alpha.is_finite() {
        bail!("LoRA alpha must be finite, got {}", s.alpha)
    }
    let mut hits = vec![0usize; s.target_modules.len()];
    let mut linear_names = Vec::new();
    for part in parts {
        match part {
            PartMut::Linear(l) => {
                linear_names.push(l.path.clone());
                let mut hit = false;
                for (t, n) in s.target_modules.iter().zip(hits.iter_mut()) {
                    if matches(&l.path, t) {
                        *n += 1;
                        hit = true;
                    }
                }
                if hit {
                    l.add_lora(s, seed)?;
                }
                let trains_bias = match s.bias {
                    LoraBias::None => false,
                    LoraBias::All => true,
                    LoraBias::LoraOnly => hit,
                };
                if let (true, Some(b)) = (trains_bias, l.bias.as_mut()) {
                    b.make_trainable()?;
                }
            }
            PartMut::Norm(n) => {
                if s.bias == LoraBias::All {
                    n.bias.make_trainable()?;
                }
            }
        }
    }
    let missing: Vec<&str> = s
        .target_modules
        .iter()
        .zip(&hits)
        .filter(|(_, &n)| n == 0)
        .map(|(t, _)| t.as_str())
        .collect();
    if !missing.is_empty() {
        let mut short: Vec<&str> = linear_names
            .iter()
            .filter_map(|p| p.rsplit('.').next())
            .collect();
        short.sort();
        short.dedup();
        bail!(
            "target module(s) {missing:?} match no linear layer of this {arch} model \
             (its linear layers are named {short:?}; full paths: {})",
            linear_names.join(", ")
        )
    }
    Ok(())
}

/// Fresh weights as HF initialises a new head: normal(0, std), bias 0.
pub(crate) fn normal(shape: (usize, usize), std: f64, seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.0 * shape.1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        // Box–Muller.
        let (u1, u2): (f64, f64) = (rng.random::<f64>(), rng.random::<f64>());
        let r = (-2.0 * (1.0 - u1).ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        v.push((std * r * t.cos()) as f32);
        v.push((std * r * t.sin()) as f32);
    }
    v.truncate(n);
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// PEFT's saved name of an in-memory parameter name (the adapter name is dropped).
pub(crate) fn saved_name(name: &str) -> String {
    name.replace(".modules_to_save.default.", ".")
        .replace(".default.", ".")
}
