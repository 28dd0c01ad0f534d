//! CUDA kernels (`kernels.cu`) as candle custom ops, for tensors on a CUDA device: dropout with
//! the CPU's masks (no host-generated mask uploaded per call), the attention's masked softmax,
//! residual + LayerNorm and GELU, each one launch forward and one backward where candle's
//! composed ops take five to fifteen (and its autograd as many again).
//!
//! `ops` picks these for CUDA tensors (`Ctx::cuda_for`); `Kernels::Composed` turns them off, so
//! tests and `imdb-lora check-kernels` can compare them with the composed ops on the same device.
//! The ops compile in every build (their CPU entry points refuse); only the launches need the
//! `cuda` feature.

// Without the `cuda` feature the launches are compiled out and the ops are never built.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape,
};
use candle_core::{Tensor, D};

use crate::activation::Act;
use crate::dropout_mask::DropKey;

/// Elementwise dropout: y = x · factor(i), the mask of `DropKey` (the same as on the CPU).
#[derive(Clone, Copy)]
pub(crate) struct Dropout(pub DropKey);

/// p = softmax(s · scale + key_bias (+ causal mask)) over the last dim of s [batch, heads, q, n];
/// `key_bias` is [batch, n] f32 on the device (0 or `ops::MASKED`).
pub(crate) struct MaskedSoftmax {
    pub key_bias: Tensor,
    pub causal: bool,
    pub scale: f32,
}

struct MaskedSoftmaxBackward {
    scale: f32,
}

/// LayerNorm over the last dim of dropout(x) + residual (CustomOp3 on x, residual, bias) or of x
/// (CustomOp2 on x, bias), with the frozen weight held here; as `cpu::LayerNorm`.
pub(crate) struct LayerNorm {
    pub w: Tensor,
    pub eps: f32,
    pub dropout: Option<DropKey>,
}

/// The gradient of LayerNorm's input (dropout(x) + residual): CustomOp3 on x, residual, grad or
/// CustomOp2 on x, grad.
struct LayerNormBackward<'a>(&'a LayerNorm);

/// [B, X, Y, D] → [B, Y, X, D] (attention heads out of and back into the hidden dim); its
/// backward pass is the same swap of the gradient.
pub(crate) struct SwapMiddle;

/// GELU, exact or tanh-approximated, with its derivative as backward pass.
pub(crate) struct Gelu(pub Act);

struct GeluBackward(Act);

fn cuda_only(op: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{op}: a CUDA kernel, called on CPU tensors (ops dispatches CPU tensors elsewhere)")
}

/// The gradient of a LayerNorm bias: the sum of `grad` over every dim but the last.
fn bias_grad(grad: &Tensor, b: &Tensor) -> Result<Tensor> {
    let h = grad.dim(D::Minus1)?;
    grad.to_dtype(DType::F32)?
        .reshape(((), h))?
        .sum(0)?
        .to_dtype(b.dtype())
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "cuda-dropout"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((launch::dropout(s, l, &self.0)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "cuda-masked-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((launch::masked_softmax(s, l, self)?, l.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, p: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = MaskedSoftmaxBackward { scale: self.scale };
        Ok(Some(p.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

impl CustomOp2 for MaskedSoftmaxBackward {
    fn name(&self) -> &'static str {
        "cuda-masked-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &CudaStorage,
        pl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let ds = launch::masked_softmax_backward(p, pl, g, gl, self.scale)?;
        Ok((ds, pl.shape().clone()))
    }
}

impl LayerNorm {
    fn check(&self, x: &Layout) -> Result<()> {
        if x.dims().last() != Some(&self.w.elem_count()) {
            bail!(
                "cuda layer-norm: input {:?} does not fit weight {:?}",
                x.dims(),
                self.w.dims()
            )
        }
        Ok(())
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

impl CustomOp2 for LayerNorm {
    fn name(&self) -> &'static str {
        "cuda-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only("cuda-layer-norm")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.check(xl)?;
        let y = launch::layer_norm(self, x, xl, None, b, bl)?;
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
        "cuda-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only("cuda-add-layer-norm")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        r: &CudaStorage,
        rl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.check(xl)?;
        if rl.dims() != xl.dims() {
            bail!(
                "cuda add-layer-norm: residual {:?} vs input {:?}",
                rl.dims(),
                xl.dims()
            )
        }
        let y = launch::layer_norm(self, x, xl, Some((r, rl)), b, bl)?;
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
        "cuda-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only("cuda-layer-norm-backward")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dx = launch::layer_norm_backward(self.0, x, xl, None, g, gl)?;
        Ok((dx, xl.shape().clone()))
    }
}

impl CustomOp3 for LayerNormBackward<'_> {
    fn name(&self) -> &'static str {
        "cuda-add-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only("cuda-add-layer-norm-backward")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        r: &CudaStorage,
        rl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dsum = launch::layer_norm_backward(self.0, x, xl, Some((r, rl)), g, gl)?;
        Ok((dsum, xl.shape().clone()))
    }
}

impl CustomOp1 for SwapMiddle {
    fn name(&self) -> &'static str {
        "cuda-swap-middle"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (nb, nx, ny, d) = l.shape().dims4()?;
        Ok((launch::swap_middle(x, l)?, Shape::from((nb, ny, nx, d))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "cuda-gelu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((launch::gelu(x, l, self.0)?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = GeluBackward(self.0);
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "cuda-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Ok((
            launch::gelu_backward(x, xl, g, gl, self.0)?,
            xl.shape().clone(),
        ))
    }
}

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

/// The launches: typed views of the inputs, one kernel per call.
#[cfg(feature = "cuda")]
pub(crate) mod launch;
