//! Differentiable building blocks: the one dispatch point between implementations. Each uses
//! the fused kernel of `cpu` for f32 tensors on the CPU, the kernels of `cuda` for tensors on a
//! GPU, and otherwise composes stock candle ops (any device and dtype, candle's autograd), which
//! `Kernels::Composed` forces everywhere as the reference the others are tested against.

use std::sync::Arc;

use candle_core::{bail, DType, Result, Tensor, Var, D};

use crate::activation::Act;
use crate::cpu;
use crate::cuda;
use crate::dropout_mask::DropKey;
use crate::frozen::FrozenMatmul;

/// Added to the attention scores of masked keys. HF adds finfo.min; any value this negative
/// gives the same probabilities, and two of them still add up to a finite number.
pub(crate) const MASKED: f32 = -1e30;

/// What one forward pass runs with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    /// Use the fused CPU kernels where they apply.
    pub fused: bool,
    /// Some(seed) in training mode: dropout is active.
    pub dropout_seed: Option<u64>,
    /// Read trainable parameters as plain tensors: no autograd graph (inference).
    pub detach: bool,
    /// Some((kept, of)): the tensors hold the first `kept` of every `of` positions of each
    /// sequence (the last BERT layer computes [CLS] only); dropout keys are placed so that
    /// these rows get the masks they have in the full tensors.
    pub rows: Option<(usize, usize)>,
}

impl Ctx {
    pub fn param(&self, v: &Var) -> Tensor {
        if self.detach {
            v.as_detached_tensor()
        } else {
            v.as_tensor().clone()
        }
    }

    /// The dropout mask key of a dropout site, None when dropout is off.
    pub fn dropout(&self, p: f64, site: u64) -> Option<DropKey> {
        match self.dropout_seed {
            Some(seed) if p > 0.0 => Some(DropKey::new(p, seed, site)),
            _ => None,
        }
    }

    /// This pass computing only the first `kept` of every `of` positions.
    pub fn first_rows(&self, kept: usize, of: usize) -> Ctx {
        Ctx {
            rows: Some((kept, of)),
            ..*self
        }
    }

    /// `key` for a tensor of rows of `width` elements in this pass (see `rows`).
    fn place(&self, key: Option<DropKey>, width: usize) -> Option<DropKey> {
        match (key, self.rows) {
            (Some(k), Some((kept, of))) => Some(k.placed(kept, of, width)),
            _ => key,
        }
    }

    fn fused_for(&self, ts: &[&Tensor]) -> bool {
        self.fused
            && ts
                .iter()
                .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
    }

    /// The CUDA kernels apply: every tensor on a CUDA device in a float type they handle.
    fn cuda_for(&self, ts: &[&Tensor]) -> bool {
        cfg!(feature = "cuda")
            && self.fused
            && ts.iter().all(|t| {
                t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
            })
    }
}

/// `op(x)`, recording the op for autograd only when x needs a gradient.
fn apply1<C: candle_core::CustomOp1 + Send + Sync + 'static>(x: &Tensor, op: C) -> Result<Tensor> {
    if x.track_op() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}

/// A frozen weight, stored [out, in] (nn.Linear) or [in, out] (GPT-2's Conv1D), and its bias.
#[derive(Clone, Copy)]
pub(crate) struct Frozen<'a> {
    pub w: &'a Tensor,
    pub b: Option<&'a Tensor>,
    pub conv1d: bool,
    /// `w` packed for the CPU's bf16 or int8 kernels, which then take f32 activations.
    pub packed: Option<&'a Arc<cpu::PackedLinear>>,
}

impl Frozen<'_> {
    /// (out, in)
    fn dims(&self) -> Result<(usize, usize)> {
        let (a, b) = self.w.dims2()?;
        Ok(if self.conv1d { (b, a) } else { (a, b) })
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        if x.dim(D::Minus1)? != self.dims()?.1 {
            bail!(
                "linear: input {:?} does not fit weight {:?} (conv1d: {})",
                x.dims(),
                self.w.dims(),
                self.conv1d
            )
        }
        Ok(())
    }

    fn fused(&self, x: &Tensor, ctx: &Ctx) -> bool {
        ctx.fused_for(&[x])
            && (self.packed.is_some() || ctx.fused_for(&[self.w]))
            && self.b.is_none_or(|b| ctx.fused_for(&[b]))
    }

    fn op(&self, act: Act) -> cpu::FrozenLinear {
        let w = match self.packed {
            Some(p) => cpu::Weight::Packed(p.clone()),
            None => cpu::Weight::F32(self.w.clone()),
        };
        let (b, conv1d) = (self.b.cloned(), self.conv1d);
        cpu::FrozenLinear { w, b, conv1d, act }
    }

    fn matmul(&self) -> FrozenMatmul {
        let (w, b, conv1d) = (self.w.clone(), self.b.cloned(), self.conv1d);
        FrozenMatmul { w, b, conv1d }
    }
}

/// `act(x · Wᵀ + b)`.
pub(crate) fn linear(x: &Tensor, f: Frozen, act: Act, ctx: &Ctx) -> Result<Tensor> {
    f.check(x)?;
    if f.fused(x, ctx) {
        let x = x.contiguous()?;
        // The activation is fused only when no gradient flows through it.
        if !x.track_op() {
            return x.apply_op1_no_bwd(&f.op(act));
        }
        return activation(&x.apply_op1(f.op(Act::None))?, act, ctx);
    }
    let same_dtype = |t: &Tensor| t.dtype() == x.dtype() && t.device().same_device(x.device());
    if ctx.fused && same_dtype(f.w) && f.b.is_none_or(same_dtype) {
        // Other devices and dtypes: one matmul (+ bias) whose backward pass skips the frozen
        // weight's gradient.
        return activation(&apply1(&x.contiguous()?, f.matmul())?, act, ctx);
    }
    let mut dims = x.dims().to_vec();
    // CUDA's matmul takes only rows at unit stride ([CLS] rows of a batch are not).
    let x2 = x.contiguous()?.flatten_to(dims.len() - 2)?;
    // bf16 weights with f32 activations (the CPU's bf16): the reference computes in f32.
    let w = f.w.to_dtype(x.dtype())?;
    let w = if f.conv1d { w } else { w.t()? };
    let mut y = x2.matmul(&w)?;
    if let Some(b) = f.b {
        y = y.broadcast_add(b)?;
    }
    *dims.last_mut().unwrap() = f.dims()?.0;
    activation(&y.reshape(dims)?, act, ctx)
}

/// `x · Wᵀ + b + scale · (dropout(x) · Aᵀ) · Bᵀ` as one fused CPU op; None where it does not
/// apply (the caller composes it then).
pub(crate) fn lora_linear(
    x: &Tensor,
    f: Frozen,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    key: Option<DropKey>,
    ctx: &Ctx,
) -> Result<Option<Tensor>> {
    f.check(x)?;
    if !f.fused(x, ctx) || !ctx.fused_for(&[a, b]) {
        return Ok(None);
    }
    let op = cpu::LoraLinear {
        base: f.op(Act::None),
        scale: scale as f32,
        dropout: ctx.place(key, x.dim(D::Minus1)?),
    };
    let (x, a, b) = (x.contiguous()?, a.contiguous()?, b.contiguous()?);
    let y = if [&x, &a, &b].iter().any(|t| t.track_op()) {
        x.apply_op3(&a, &b, op)?
    } else {
        x.apply_op3_no_bwd(&a, &b, &op)?
    };
    Ok(Some(y))
}

pub(crate) fn activation(x: &Tensor, act: Act, ctx: &Ctx) -> Result<Tensor> {
    match act {
        Act::None => Ok(x.clone()),
        _ if ctx.fused_for(&[x]) => x.contiguous()?.apply_op1(cpu::Gelu(act)),
        _ if ctx.cuda_for(&[x]) => apply1(&x.contiguous()?, cuda::Gelu(act)),
        Act::GeluErf => x.gelu_erf(),
        Act::GeluTanh => x.gelu(),
    }
}

/// LayerNorm over the last dimension.
pub(crate) fn layer_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    ctx: &Ctx,
) -> Result<Tensor> {
    if ctx.fused_for(&[x, w, b]) && !w.track_op() {
        let op = cpu::LayerNorm {
            w: w.contiguous()?,
            eps: eps as f32,
            dropout: None,
        };
        let (x, b) = (x.contiguous()?, b.contiguous()?);
        return if x.track_op() || b.track_op() {
            x.apply_op2(&b, op)
        } else {
            x.apply_op2_no_bwd(&b, &op)
        };
    }
    if ctx.cuda_for(&[x]) && !w.track_op() {
        let op = cuda::LayerNorm {
            w: w.to_dtype(x.dtype())?.contiguous()?,
            eps: eps as f32,
            dropout: None,
        };
        let (x, b) = (x.contiguous()?, b.to_dtype(x.dtype())?.contiguous()?);
        return if x.track_op() || b.track_op() {
            x.apply_op2(&b, op)
        } else {
            x.apply_op2_no_bwd(&b, &op)
        };
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    y.broadcast_mul(&w.to_dtype(DType::F32)?)?
        .broadcast_add(&b.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}

/// LayerNorm(dropout(x) + residual): BERT's post-LayerNorm residual blocks, in one pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_layer_norm(
    x: &Tensor,
    key: Option<DropKey>,
    residual: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    ctx: &Ctx,
) -> Result<Tensor> {
    let key = ctx.place(key, x.dim(D::Minus1)?);
    if ctx.fused_for(&[x, residual, w, b]) && !w.track_op() && x.dims() == residual.dims() {
        let op = cpu::LayerNorm {
            w: w.contiguous()?,
            eps: eps as f32,
            dropout: key,
        };
        let (x, r, b) = (x.contiguous()?, residual.contiguous()?, b.contiguous()?);
        return if [&x, &r, &b].iter().any(|t| t.track_op()) {
            x.apply_op3(&r, &b, op)
        } else {
            x.apply_op3_no_bwd(&r, &b, &op)
        };
    }
    let identity = key.is_none_or(|k| k.is_identity());
    if ctx.cuda_for(&[x, residual]) && !w.track_op() && x.dims() == residual.dims() && identity {
        let op = cuda::LayerNorm {
            w: w.to_dtype(x.dtype())?.contiguous()?,
            eps: eps as f32,
            dropout: key,
        };
        let (x, r) = (x.contiguous()?, residual.to_dtype(x.dtype())?.contiguous()?);
        let b = b.to_dtype(x.dtype())?.contiguous()?;
        return if [&x, &r, &b].iter().any(|t| t.track_op()) {
            x.apply_op3(&r, &b, op)
        } else {
            x.apply_op3_no_bwd(&r, &b, &op)
        };
    }
    layer_norm(&(dropout(x, key, ctx)? + residual)?, w, b, eps, ctx)
}

pub(crate) fn dropout(x: &Tensor, key: Option<DropKey>, ctx: &Ctx) -> Result<Tensor> {
    let Some(key) = ctx.place(key, x.dim(D::Minus1)?) else {
        return Ok(x.clone());
    };
    if ctx.fused_for(&[x]) {
        return x.contiguous()?.apply_op1(cpu::Dropout(key));
    }
    if ctx.cuda_for(&[x]) && key.is_identity() {
        return apply1(&x.contiguous()?, cuda::Dropout(key));
    }
    // In f32, as the kernels compute: 1/(1-p) is not exact in bf16.
    let mask = Tensor::from_vec(key.mask(x.elem_count()), x.shape(), x.device())?;
    (x.to_dtype(DType::F32)? * mask)?.to_dtype(x.dtype())
}

/// The padding mask of a batch as an additive bias on the keys, [batch, seq].
pub(crate) struct KeyMask {
    pub bias: Arc<Vec<f32>>,
    pub batch: usize,
    pub seq: usize,
    /// The bias as an f32 tensor on the model's device (uploaded once per forward pass).
    pub tensor: Tensor,
}

/// Multi-head attention of queries q [batch, q_len, hidden] over keys and values k, v [batch,
/// seq, hidden] (views with unit column stride are fine), the queries being the first q_len
/// positions (all of them, or [CLS] alone with `ctx.first_rows(1, seq)`); scores scaled by
/// `scale`, with the key mask, optionally causal, with dropout on the probabilities. Returns
/// [batch, q_len, hidden].
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
    mask: &KeyMask,
    key: Option<DropKey>,
    ctx: &Ctx,
) -> Result<Tensor> {
    let (b, nq, hid) = q.dims3()?;
    let n = k.dim(1)?;
    let rows_fit = ctx.rows.map_or(nq == n, |(kept, of)| (kept, of) == (nq, n));
    if (b, n) != (mask.batch, mask.seq)
        || k.dims() != [b, n, hid]
        || v.dims() != k.dims()
        || !rows_fit
    {
        bail!(
            "attention: shapes {:?} {:?} {:?}, mask [{}, {}] and rows {:?} differ",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.batch,
            mask.seq,
            ctx.rows
        )
    }
    // The probabilities [batch, heads, q_len, seq]: rows of `seq` elements.
    let key = ctx.place(key, n);
    if ctx.fused_for(&[q, k, v]) {
        let unit = |t: &Tensor| -> Result<Tensor> {
            if t.stride()[2] == 1 {
                Ok(t.clone())
            } else {
                t.contiguous()
            }
        };
        let (q, k, v) = (unit(q)?, unit(k)?, unit(v)?);
        let mut op = cpu::Attention::new(heads, scale as f32, causal, mask.bias.clone());
        op.dropout = key;
        op.save = q.track_op() || k.track_op() || v.track_op();
        return if op.save {
            q.apply_op3(&k, &v, op)
        } else {
            q.apply_op3_no_bwd(&k, &v, &op)
        };
    }
    let d = hid / heads;
    if ctx.cuda_for(&[q, k, v]) {
        // [b, len, heads·d] → [b, heads, len, d] and back, each one kernel.
        let split = |t: &Tensor| {
            let len = t.dim(1)?;
            apply1(
                &t.contiguous()?.reshape((b, len, heads, d))?,
                cuda::SwapMiddle,
            )
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let op = cuda::MaskedSoftmax {
            key_bias: mask.tensor.clone(),
            causal,
            scale: scale as f32,
        };
        let p = dropout(&apply1(&q.matmul(&k.t()?)?, op)?, key, ctx)?;
        return apply1(&p.matmul(&v)?, cuda::SwapMiddle)?.reshape((b, nq, hid));
    }
    let split = |t: &Tensor| {
        let len = t.dim(1)?;
        t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let dtype = q.dtype();
    let s = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    let mut s = s.broadcast_add(&mask.tensor.reshape((b, 1, 1, n))?)?;
    if causal {
        let c: Vec<f32> = (0..nq * n)
            .map(|i| if i % n > i / n { MASKED } else { 0.0 })
            .collect();
        s = s.broadcast_add(&Tensor::from_vec(c, (nq, n), q.device())?)?;
    }
    // Softmax from differentiable ops (candle_nn's fused softmax has no backward pass).
    let e = s
        .broadcast_sub(&s.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let p = dropout(&p, key, ctx)?;
    p.to_dtype(dtype)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, nq, hid))
}
