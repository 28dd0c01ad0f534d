//! LayerNorm over the last dimension with a frozen weight, fused with the residual add and the
//! dropout before it (BERT's post-LayerNorm residual blocks), and its hand-written gradients.

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};

use super::dropout::{dropout, Dropout};
use super::{apply2, apply3, Ctx};
use crate::cpu;
use crate::dropout_mask::DropKey;

/// LayerNorm of dropout(x) + residual (a CustomOp3 on x, residual, bias) or of x (a CustomOp2
/// on x, bias). The weight is frozen and held here; the bias may train (PEFT's bias = "all").
pub(crate) struct LayerNorm {
    pub w: Tensor,
    pub eps: f32,
    /// Dropout on x before the residual add.
    pub dropout: Option<DropKey>,
}

/// The gradient of the LayerNorm input (= of the residual): a CustomOp3 on x, residual, dy or
/// a CustomOp2 on x, dy.
struct LayerNormBackward<'a>(&'a LayerNorm);

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

    /// `f` on the CPU kernel's view of this LayerNorm.
    fn on_cpu<R>(&self, f: impl FnOnce(cpu::Norm) -> Result<R>) -> Result<R> {
        let w = cpu::data(&self.w);
        f(cpu::Norm {
            w: w.f32()?,
            eps: self.eps,
            dropout: self.dropout,
        })
    }

    #[cfg(feature = "cuda")]
    fn on_cuda(&self) -> crate::cuda::launch::Norm<'_> {
        crate::cuda::launch::Norm {
            w: &self.w,
            eps: self.eps,
            dropout: self.dropout,
        }
    }

    /// (dx, dsum): the gradients of x and of the LayerNorm input (= of the residual).
    fn input_grads(
        &self,
        x: &Tensor,
        r: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let back = LayerNormBackward(self);
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
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(xl, None)?;
        let (x, b) = (cpu::contiguous(x, xl)?, cpu::contiguous(b, bl)?);
        let y = self.on_cpu(|n| Ok(n.forward(x, None, b)))?;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.check(xl, None)?;
        let y = crate::cuda::launch::layer_norm((x, xl), None, (b, bl), self.on_cuda())?;
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
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
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(xl, Some(rl))?;
        let (x, r) = (cpu::contiguous(x, xl)?, cpu::contiguous(r, rl)?);
        let b = cpu::contiguous(b, bl)?;
        let y = self.on_cpu(|n| Ok(n.forward(x, Some(r), b)))?;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        r: &candle_core::CudaStorage,
        rl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.check(xl, Some(rl))?;
        let y = crate::cuda::launch::layer_norm((x, xl), Some((r, rl)), (b, bl), self.on_cuda())?;
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
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

impl CustomOp2 for LayerNormBackward<'_> {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (cpu::contiguous(x, xl)?, cpu::contiguous(g, gl)?);
        let dx = self.0.on_cpu(|n| Ok(n.input_grad(x, None, g)))?;
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx =
            crate::cuda::launch::layer_norm_backward((x, xl), None, (g, gl), self.0.on_cuda())?;
        Ok((dx, xl.shape().clone()))
    }
}

impl CustomOp3 for LayerNormBackward<'_> {
    fn name(&self) -> &'static str {
        "add-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, r) = (cpu::contiguous(x, xl)?, cpu::contiguous(r, rl)?);
        let g = cpu::contiguous(g, gl)?;
        let dsum = self.0.on_cpu(|n| Ok(n.input_grad(x, Some(r), g)))?;
        Ok((CpuStorage::F32(dsum), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        r: &candle_core::CudaStorage,
        rl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let back = self.0.on_cuda();
        let dsum = crate::cuda::launch::layer_norm_backward((x, xl), Some((r, rl)), (g, gl), back)?;
        Ok((dsum, xl.shape().clone()))
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
    let on_kernels = ctx.fused_for(&[x, residual]) || ctx.cuda_for(&[x, residual]);
    if on_kernels && x.dims() == residual.dims() {
        if let Some((op, b)) = op(x, w, b, key, eps, ctx)? {
            let r = residual.to_dtype(x.dtype())?.contiguous()?;
            return apply3(&x.contiguous()?, &r, &b, op);
        }
    }
    layer_norm(&(dropout(x, key, ctx)? + residual)?, w, b, eps, ctx)
}
