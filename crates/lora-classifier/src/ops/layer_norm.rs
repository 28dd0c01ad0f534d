//! LayerNorm over the last dimension with a frozen weight, fused with the residual add and the
//! dropout before it (BERT's post-LayerNorm residual blocks), and its hand-written gradients.

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};

use super::dropout::{dropout, Dropout};
use super::{apply2, apply3, Ctx};
use crate::cpu;
use crate::dropout_mask::DropKey;

/// LayerNorm of dropout(x) + residual (a CustomOp3 on x, residual, z) or of x (a CustomOp2 on
/// x, z), z being the bias in the forward pass and the output gradient in the `InputGrad` pass.
/// The weight is frozen and held here; the bias may train (PEFT's bias = "all").
struct LayerNorm {
    w: Tensor,
    eps: f32,
    /// Dropout on x before the residual add.
    dropout: Option<DropKey>,
    pass: Pass,
}

/// Which kernel a LayerNorm op runs: y, or the gradient of its input (= of the residual).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    InputGrad,
}

type Cpu<'a> = (&'a CpuStorage, &'a Layout);
#[cfg(feature = "cuda")]
use crate::cuda::launch::In as Cuda;

impl LayerNorm {
    fn check(&self, x: &Layout, r: Option<&Layout>) -> Result<()> {
        if x.dims().last() != Some(&self.w.elem_count()) || r.is_some_and(|r| r.dims() != x.dims())
        {
            bail!(
                "layer-norm: input {:?} (residual {:?}) does not fit weight {:?}",
                x.dims(),
                r.map(|r| r.dims()),
                self.w.dims()
            )
        }
        Ok(())
    }

    fn cpu(&self, (x, xl): Cpu, r: Option<Cpu>, (z, zl): Cpu) -> Result<(CpuStorage, Shape)> {
        self.check(xl, r.map(|r| r.1))?;
        let x = cpu::contiguous(x, xl)?;
        let r = r.map(|(r, rl)| cpu::contiguous(r, rl)).transpose()?;
        let z = cpu::contiguous(z, zl)?;
        let w = cpu::data(&self.w);
        let norm = cpu::Norm {
            w: w.f32()?,
            eps: self.eps,
            dropout: self.dropout,
        };
        let y = match self.pass {
            Pass::Forward => norm.forward(x, r, z),
            Pass::InputGrad => norm.input_grad(x, r, z),
        };
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, x: Cuda, r: Option<Cuda>, z: Cuda) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::launch;
        self.check(x.1, r.map(|r| r.1))?;
        let norm = launch::Norm {
            w: &self.w,
            eps: self.eps,
            dropout: self.dropout,
        };
        let y = match self.pass {
            Pass::Forward => launch::layer_norm(x, r, z, norm)?,
            Pass::InputGrad => launch::layer_norm_backward(x, r, z, norm)?,
        };
        Ok((y, x.1.shape().clone()))
    }

    /// (dx, dsum): the gradients of x and of the LayerNorm input (= of the residual).
    fn input_grads(
        &self,
        x: &Tensor,
        r: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let back = LayerNorm {
            w: self.w.clone(),
            pass: Pass::InputGrad,
            ..*self
        };
        let grad = grad.contiguous()?;
        let dsum = match r {
            Some(r) => x.apply_op3_no_bwd(r, &grad, &back)?,
            None => x.apply_op2_no_bwd(&grad, &back)?,
        };
        let dx = match self.dropout {
            Some(key) => dsum.apply_op1_no_bwd(&Dropout(key))?,
            None => dsum.clone(),
        };
        Ok((dx, dsum))
    }

    fn forward_only(&self) -> Result<()> {
        if self.pass != Pass::Forward {
            bail!("layer-norm: the input-gradient pass has no backward pass")
        }
        Ok(())
    }
}

/// The gradient of a LayerNorm bias: the sum of `grad` over every dim but the last.
fn bias_grad(grad: &Tensor, b: &Tensor) -> Result<Tensor> {
    let h = grad.dim(D::Minus1)?;
    grad.to_dtype(DType::F32)?
        .reshape(((), h))?
        .sum(0)?
        .to_dtype(b.dtype())
}

impl CustomOp2 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        z: &CpuStorage,
        zl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu((x, xl), None, (z, zl))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        z: &candle_core::CudaStorage,
        zl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda((x, xl), None, (z, zl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.forward_only()?;
        let dx = match x.track_op() {
            true => Some(self.input_grads(x, None, grad)?.0),
            false => None,
        };
        let db = b.track_op().then(|| bias_grad(grad, b)).transpose()?;
        Ok((dx, db))
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
        z: &CpuStorage,
        zl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu((x, xl), Some((r, rl)), (z, zl))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        r: &candle_core::CudaStorage,
        rl: &Layout,
        z: &candle_core::CudaStorage,
        zl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda((x, xl), Some((r, rl)), (z, zl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.forward_only()?;
        let (dx, dr) = if x.track_op() || r.track_op() {
            let (dx, dsum) = self.input_grads(x, Some(r), grad)?;
            (x.track_op().then_some(dx), r.track_op().then_some(dsum))
        } else {
            (None, None)
        };
        let db = b.track_op().then(|| bias_grad(grad, b)).transpose()?;
        Ok((dx, dr, db))
    }
}

/// The op for x on this pass's kernels, its weight and bias in x's dtype; None where only the
/// composed ops apply (a trained weight, other dtypes and devices, `Kernels::Composed`).
fn op(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    key: Option<DropKey>,
    eps: f64,
    ctx: &Ctx,
) -> Result<Option<(LayerNorm, Tensor)>> {
    // The CUDA kernel reads masks at consecutive indices only.
    let identity = key.is_none_or(|k| k.is_identity());
    let fits = !w.track_op() && (ctx.fused_for(&[x, w, b]) || (ctx.cuda_for(&[x]) && identity));
    if !fits {
        return Ok(None);
    }
    let op = LayerNorm {
        w: w.to_dtype(x.dtype())?.contiguous()?,
        eps: eps as f32,
        dropout: key,
        pass: Pass::Forward,
    };
    Ok(Some((op, b.to_dtype(x.dtype())?.contiguous()?)))
}

/// LayerNorm over the last dimension.
pub(crate) fn layer_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    ctx: &Ctx,
) -> Result<Tensor> {
    if let Some((op, b)) = op(x, w, b, None, eps, ctx)? {
        return apply2(&x.contiguous()?, &b, op);
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
    if let Some((op, b, r)) = add_op(x, key, residual, w, b, eps, ctx)? {
        return apply3(&x.contiguous()?, &r, &b, op);
    }
    layer_norm(&(dropout(x, key, ctx)? + residual)?, w, b, eps, ctx)
}

/// The fused residual op of [`add_layer_norm`] where it applies (`key` placed), with the bias
/// and the residual in x's dtype.
fn add_op(
    x: &Tensor,
    key: Option<DropKey>,
    residual: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    ctx: &Ctx,
) -> Result<Option<(LayerNorm, Tensor, Tensor)>> {
    let on_kernels = ctx.fused_for(&[x, residual]) || ctx.cuda_for(&[x, residual]);
    if !on_kernels || x.dims() != residual.dims() {
        return Ok(None);
    }
    let Some((op, b)) = op(x, w, b, key, eps, ctx)? else {
        return Ok(None);
    };
    Ok(Some((op, b, residual.to_dtype(x.dtype())?.contiguous()?)))
}

/// The gradients of [`add_layer_norm`] for the output gradient `dy`, outside autograd (the
/// hand-written backward pass; the weight is frozen and the bias not trained): (dx, dresidual).
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_layer_norm_grad(
    x: &Tensor,
    key: Option<DropKey>,
    residual: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    dy: &Tensor,
    ctx: &Ctx,
) -> Result<(Tensor, Tensor)> {
    let key = ctx.place(key, x.dim(D::Minus1)?);
    if let Some((op, _, r)) = add_op(x, key, residual, w, b, eps, ctx)? {
        return op.input_grads(&x.contiguous()?, Some(&r), dy);
    }
    // The kernel without the dropout (CUDA with a placed key), on dropout(x) + residual.
    let s = (dropout(x, key, ctx)? + residual)?;
    let dsum = layer_norm_grad(&s, w, b, eps, dy, ctx)?;
    Ok((dropout(&dsum, key, ctx)?, dsum))
}

/// The input gradient of [`layer_norm`] for the output gradient `dy`, outside autograd (the
/// hand-written backward pass; the weight is frozen and the bias not trained).
pub(crate) fn layer_norm_grad(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    dy: &Tensor,
    ctx: &Ctx,
) -> Result<Tensor> {
    let Some((op, _)) = op(x, w, b, None, eps, ctx)? else {
        bail!(
            "layer-norm: no kernel for the hand-written backward pass of {:?} on {:?}",
            x.dtype(),
            x.device()
        )
    };
    Ok(op.input_grads(&x.contiguous()?, None, dy)?.0)
}
