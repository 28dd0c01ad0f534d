//! Multi-head attention: one fused op on the CPU (`Attention`); on other devices composed of
//! the head swap, the masked softmax and dropout ops (`by_parts`) around the device's matmuls;
//! and candle's composed ops as the reference.

use std::sync::{Arc, Mutex};

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape,
    Storage, Tensor, D,
};

use super::dropout::dropout;
use super::{apply1, apply3, Ctx, MASKED};
use crate::cpu;
use crate::dropout_mask::DropKey;

/// The padding mask of a batch as an additive bias on the keys, [batch, seq].
pub(crate) struct KeyMask {
    pub bias: Arc<Vec<f32>>,
    pub batch: usize,
    pub seq: usize,
    /// The bias as an f32 tensor on the model's device (uploaded once per forward pass).
    pub tensor: Tensor,
}

/// Scaled dot-product attention as one op (CustomOp3 on q, k, v; see `cpu::Heads`), keeping
/// the probabilities for its backward pass when an input needs a gradient. CPU kernels only.
struct Attention {
    heads: usize,
    scale: f32,
    causal: bool,
    mask: Arc<Vec<f32>>,
    dropout: Option<DropKey>,
    save: bool,
    probs: Mutex<Vec<f32>>,
}

impl Attention {
    fn heads(&self) -> cpu::Heads<'_> {
        cpu::Heads {
            heads: self.heads,
            scale: self.scale,
            causal: self.causal,
            mask: &self.mask,
            dropout: self.dropout,
        }
    }
}

fn cpu_data(s: &Storage) -> Result<&[f32]> {
    match s {
        Storage::Cpu(s) => s.as_slice::<f32>(),
        _ => bail!("attention: tensor is not on the cpu"),
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let data = [s1.as_slice::<f32>()?, s2.as_slice()?, s3.as_slice()?];
        let (qkv, dims) = cpu::inputs([(data[0], l1), (data[1], l2), (data[2], l3)])?;
        let (out, probs) = self.heads().forward(qkv, dims, self.save)?;
        if self.save {
            *self.probs.lock().unwrap() = probs;
        }
        let [b, m, _, hid] = dims;
        Ok((CpuStorage::F32(out), Shape::from((b, m, hid))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().unwrap();
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let inputs = [
            (cpu_data(&qs)?, ql),
            (cpu_data(&ks)?, kl),
            (cpu_data(&vs)?, vl),
        ];
        let (qkv, dims) = cpu::inputs(inputs)?;
        let (go, _) = cpu::Rows::new(cpu_data(&gs)?, gl)?;
        let [dq, dk, dv] = self.heads().backward(qkv, go, dims, &probs)?;
        let [b, m, n, hid] = dims;
        let dq = Tensor::from_vec(dq, (b, m, hid), &Device::Cpu)?;
        let [dk, dv] = [dk, dv].map(|g| Tensor::from_vec(g, (b, n, hid), &Device::Cpu));
        Ok((Some(dq), Some(dk?), Some(dv?)))
    }
}

/// p = softmax(s · scale + key_bias (+ causal mask)) over the last dim of s [batch, heads, q, n];
/// `key_bias` is [batch, n] f32 on s's device (0 or `MASKED`).
struct MaskedSoftmax {
    key_bias: Tensor,
    causal: bool,
    scale: f32,
}

/// The scores' gradient from p and dp: a CustomOp2 on p, dp.
struct MaskedSoftmaxBackward {
    scale: f32,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, heads, q, n) = l.shape().dims4()?;
        if self.key_bias.dims() != [b, n] {
            bail!(
                "masked softmax: key bias {:?} for scores {:?}",
                self.key_bias.dims(),
                l.dims()
            )
        }
        let bias = cpu::data(&self.key_bias);
        let dims = [b, heads, q, n];
        let p = cpu::masked_softmax(
            cpu::contiguous(s, l)?,
            dims,
            bias.f32()?,
            self.causal,
            self.scale,
        );
        Ok((CpuStorage::F32(p), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let p =
            crate::cuda::launch::masked_softmax((s, l), &self.key_bias, self.causal, self.scale)?;
        Ok((p, l.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, p: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = MaskedSoftmaxBackward { scale: self.scale };
        Ok(Some(p.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// The probabilities and their gradient have one shape.
fn same_dims(pl: &Layout, gl: &Layout) -> Result<()> {
    if pl.dims() != gl.dims() {
        bail!(
            "masked softmax backward: probabilities {:?} vs gradient {:?}",
            pl.dims(),
            gl.dims()
        )
    }
    Ok(())
}

impl CustomOp2 for MaskedSoftmaxBackward {
    fn name(&self) -> &'static str {
        "masked-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        pl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_dims(pl, gl)?;
        let n = pl.dims().last().copied().unwrap_or(1);
        let (p, g) = (cpu::contiguous(p, pl)?, cpu::contiguous(g, gl)?);
        let ds = cpu::masked_softmax_backward(p, g, n, self.scale);
        Ok((CpuStorage::F32(ds), pl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &candle_core::CudaStorage,
        pl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        same_dims(pl, gl)?;
        let ds = crate::cuda::launch::masked_softmax_backward((p, pl), (g, gl), self.scale)?;
        Ok((ds, pl.shape().clone()))
    }
}

/// [B, X, Y, D] → [B, Y, X, D] (attention heads out of and back into the hidden dim); its
/// backward pass is the same swap of the gradient.
struct SwapMiddle;

impl CustomOp1 for SwapMiddle {
    fn name(&self) -> &'static str {
        "swap-middle"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (nb, nx, ny, d) = l.shape().dims4()?;
        let y = cpu::swap_middle(cpu::contiguous(s, l)?, [nb, nx, ny, d]);
        Ok((CpuStorage::F32(y), Shape::from((nb, ny, nx, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (nb, nx, ny, d) = l.shape().dims4()?;
        let y = crate::cuda::launch::swap_middle((x, l))?;
        Ok((y, Shape::from((nb, ny, nx, d))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// What an attention computes besides q, k and v: the heads, the scores' scale, causal or not,
/// the key mask, and the dropout key of the probabilities (placed for the pass by `attention`).
#[derive(Clone, Copy)]
pub(crate) struct AttentionSpec<'a> {
    pub heads: usize,
    pub scale: f64,
    pub causal: bool,
    pub mask: &'a KeyMask,
    pub key: Option<DropKey>,
}

/// Multi-head attention of queries q [batch, q_len, hidden] over keys and values k, v [batch,
/// seq, hidden] (views with unit column stride are fine), the queries being the first q_len
/// positions (all of them, or [CLS] alone with `ctx.first_rows(1, seq)`), as `spec` says.
/// Returns [batch, q_len, hidden] and, with `save`, what its hand-written backward pass
/// ([`AttentionTape::grads`]) takes, outside autograd: the device's kernels only (the CPU's
/// fused op, or the parts on a GPU).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spec: AttentionSpec,
    ctx: &Ctx,
    save: bool,
) -> Result<(Tensor, Option<AttentionTape>)> {
    let spec = spec.checked(q, k, v, ctx)?;
    if ctx.fused_for(&[q, k, v]) {
        let (q, k, v) = (unit(q)?, unit(k)?, unit(v)?);
        if !save {
            let track = q.track_op() || k.track_op() || v.track_op();
            return Ok((apply3(&q, &k, &v, spec.cpu_op(track))?, None));
        }
        let op = spec.cpu_op(true);
        let out = q.apply_op3_no_bwd(&k, &v, &op)?;
        let kind = Tape::Fused(op, out.clone());
        return Ok((out, Some(AttentionTape { q, k, v, kind })));
    }
    if ctx.cuda_for(&[q, k, v]) {
        let (out, parts) = by_parts(q, k, v, &spec, ctx)?;
        let tape = save.then(|| AttentionTape {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            kind: Tape::Parts(parts),
        });
        return Ok((out, tape));
    }
    if save {
        bail!(
            "attention: no kernel for the hand-written backward pass of {:?} on {:?}",
            q.dtype(),
            q.device()
        )
    }
    Ok((composed(q, k, v, &spec, ctx)?, None))
}

/// What the backward pass of one attention needs, kept by [`attention`] with `save`.
pub(crate) struct AttentionTape {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kind: Tape,
}

enum Tape {
    /// The CPU's fused op, holding the probabilities, and its output.
    Fused(Attention, Tensor),
    /// The parts' intermediates.
    Parts(Parts),
}

impl AttentionTape {
    /// (dq, dk, dv) for the output gradient `dout`.
    pub(crate) fn grads(&self, dout: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor, Tensor)> {
        match &self.kind {
            Tape::Fused(op, out) => {
                let (dq, dk, dv) = op.bwd(&self.q, &self.k, &self.v, out, dout)?;
                let missing = || candle_core::Error::Msg("attention: a gradient is missing".into());
                Ok((
                    dq.ok_or_else(missing)?,
                    dk.ok_or_else(missing)?,
                    dv.ok_or_else(missing)?,
                ))
            }
            Tape::Parts(p) => p.grads(dout, ctx),
        }
    }
}

/// `t` with unit column stride, as the fused op reads it.
fn unit(t: &Tensor) -> Result<Tensor> {
    if t.stride()[2] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

impl<'a> AttentionSpec<'a> {
    /// The shapes checked and the dropout key placed for the probabilities [batch, heads,
    /// q_len, seq] (rows of `seq` elements).
    fn checked(self, q: &Tensor, k: &Tensor, v: &Tensor, ctx: &Ctx) -> Result<Self> {
        let (b, nq, hid) = q.dims3()?;
        let n = k.dim(1)?;
        let mask = self.mask;
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
        Ok(AttentionSpec {
            key: ctx.place(self.key, n),
            ..self
        })
    }

    fn cpu_op(&self, save: bool) -> Attention {
        Attention {
            heads: self.heads,
            scale: self.scale as f32,
            causal: self.causal,
            mask: self.mask.bias.clone(),
            dropout: self.key,
            save,
            probs: Mutex::new(Vec::new()),
        }
    }
}

/// Attention from the device's matmuls and the swap, masked softmax and dropout ops: each head
/// split or merge one kernel, the softmax one kernel forward and one backward. Also returns the
/// intermediates that its hand-written backward pass takes.
fn by_parts(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    a: &AttentionSpec,
    ctx: &Ctx,
) -> Result<(Tensor, Parts)> {
    let (heads, key) = (a.heads, a.key);
    let (b, nq, hid) = q.dims3()?;
    let d = hid / heads;
    // [b, len, heads·d] → [b, heads, len, d] and back, each one kernel.
    let split = |t: &Tensor| {
        let len = t.dim(1)?;
        apply1(&t.contiguous()?.reshape((b, len, heads, d))?, SwapMiddle)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let op = MaskedSoftmax {
        key_bias: a.mask.tensor.clone(),
        causal: a.causal,
        scale: a.scale as f32,
    };
    let p = apply1(&q.matmul(&k.t()?)?, op)?;
    let pd = dropout(&p, key, ctx)?;
    let out = apply1(&pd.matmul(&v)?, SwapMiddle)?.reshape((b, nq, hid))?;
    let parts = Parts {
        q,
        k,
        v,
        p,
        key,
        scale: a.scale as f32,
    };
    Ok((out, parts))
}

/// The intermediates of [`by_parts`]: q, k, v split into heads ([b, heads, len, d]) and the
/// probabilities before dropout.
struct Parts {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    key: Option<DropKey>,
    scale: f32,
}

impl Parts {
    /// (dq, dk, dv) as [b, len, hidden] for the output gradient `dout`.
    fn grads(&self, dout: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, heads, nq, d) = self.q.dims4()?;
        let go = dout.contiguous()?.reshape((b, nq, heads, d))?;
        let go = go.apply_op1_no_bwd(&SwapMiddle)?;
        let pd = dropout(&self.p, self.key, ctx)?;
        let dv = pd.t()?.matmul(&go)?; // P_dᵀ·dO
        let dp = dropout(&go.matmul(&self.v.t()?)?, self.key, ctx)?; // dropout'(dO·Vᵀ)
        let op = MaskedSoftmaxBackward { scale: self.scale };
        let ds = self.p.apply_op2_no_bwd(&dp.contiguous()?, &op)?;
        let dq = ds.matmul(&self.k)?; // dS·K
        let dk = ds.t()?.matmul(&self.q)?; // dSᵀ·Q
        let merge = |t: Tensor| {
            let len = t.dim(2)?;
            t.contiguous()?
                .apply_op1_no_bwd(&SwapMiddle)?
                .reshape((b, len, heads * d))
        };
        Ok((merge(dq)?, merge(dk)?, merge(dv)?))
    }
}

/// candle's ops: the reference.
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, a: &AttentionSpec, ctx: &Ctx) -> Result<Tensor> {
    let AttentionSpec {
        heads,
        scale,
        causal,
        mask,
        key,
    } = *a;
    let (b, nq, hid) = q.dims3()?;
    let n = k.dim(1)?;
    let d = hid / heads;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{Device, Tensor, Var};

    use super::{by_parts, composed, AttentionSpec, KeyMask, MASKED};
    use crate::ops::Ctx;
    use crate::test_util::max_diff;

    fn tensor(dims: &[usize], salt: u64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n as u64)
            .map(|i| {
                let h = common::hash::splitmix64(i ^ (salt << 32));
                (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The composition that CUDA runs (head swaps, masked softmax and its backward pass,
    /// dropout), here on the CPU's implementations of the same ops, equals candle's composed
    /// attention: output and the gradients of q, k and v, causal or not, all queries or the
    /// first alone, with dropout and a masked key.
    #[test]
    fn attention_by_parts_equals_the_composed_one() {
        let (b, n, heads, hid) = (2, 6, 3, 12);
        let bias: Vec<f32> = (0..b * n)
            .map(|i| if i == b * n - 1 { MASKED } else { 0.0 })
            .collect();
        let mask = KeyMask {
            tensor: Tensor::from_slice(&bias, (b, n), &Device::Cpu).unwrap(),
            bias: Arc::new(bias),
            batch: b,
            seq: n,
        };
        let ctx = Ctx {
            fused: true,
            dropout_seed: Some(5),
            detach: false,
            rows: None,
        };
        for causal in [false, true] {
            for first in [false, true] {
                let c = if first { ctx.first_rows(1, n) } else { ctx };
                let key = c.place(c.dropout(0.2, 3), n);
                let [q, k, v] =
                    [1, 2, 3].map(|s| Var::from_tensor(&tensor(&[b, n, hid], s)).unwrap());
                let query = if first {
                    q.narrow(1, 0, 1).unwrap()
                } else {
                    q.as_tensor().clone()
                };
                let g = tensor(&[b, query.dim(1).unwrap(), hid], 9);
                let run = |parts: bool| {
                    let spec = AttentionSpec {
                        heads,
                        scale: 0.5,
                        causal,
                        mask: &mask,
                        key,
                    };
                    let out = if parts {
                        by_parts(&query, &k, &v, &spec, &c).unwrap().0
                    } else {
                        composed(&query, &k, &v, &spec, &c).unwrap()
                    };
                    let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
                    let [dq, dk, dv] = [&q, &k, &v].map(|t| grads.get(t).unwrap().clone());
                    [out, dq, dk, dv]
                };
                let (want, got) = (run(false), run(true));
                for (name, a, b) in ["output", "dq", "dk", "dv"]
                    .iter()
                    .zip(&want)
                    .zip(&got)
                    .map(|((n, a), b)| (n, a, b))
                {
                    let d = max_diff(a, b);
                    assert!(
                        d < 1e-5,
                        "causal {causal}, first {first}: {name} differs by {d}"
                    );
                }
                // The parts' hand-written backward pass (no autograd) gives the same gradients.
                let spec = AttentionSpec {
                    heads,
                    scale: 0.5,
                    causal,
                    mask: &mask,
                    key,
                };
                let detached = [&query, k.as_tensor(), v.as_tensor()].map(|t| t.detach());
                let [dq_, dk_, dv_] = &detached;
                let (_, parts) = by_parts(dq_, dk_, dv_, &spec, &c).unwrap();
                let (dq, dk, dv) = parts.grads(&g, &c).unwrap();
                let want_dq = want[1].narrow(1, 0, dq.dim(1).unwrap()).unwrap();
                for (name, got, want) in [
                    ("dq", &dq, &want_dq),
                    ("dk", &dk, &want[2]),
                    ("dv", &dv, &want[3]),
                ] {
                    let d = max_diff(got, want);
                    assert!(
                        d < 1e-5,
                        "hand-written, causal {causal}, first {first}: {name} differs by {d}"
                    );
                }
            }
        }
    }
}
