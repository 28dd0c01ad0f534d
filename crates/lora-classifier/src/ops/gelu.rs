//! GELU, exact (erf) or tanh-approximated, with its exact derivative as backward pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{apply1, Ctx};
use crate::activation::Act;
use crate::cpu;

/// act(x) elementwise.
struct Gelu(Act);

/// dx = act'(x) ⊙ dy: a CustomOp2 on x and dy.
struct GeluBackward(Act);

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = cpu::gelu(cpu::contiguous(s, l)?, self.0);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::cuda::launch::gelu((s, l), None, self.0)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward(self.0))?;
        Ok(Some(dx))
    }
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (cpu::contiguous(x, xl)?, cpu::contiguous(g, gl)?);
        if x.len() != g.len() {
            candle_core::bail!(
                "gelu backward: gradient of {} values for {} inputs",
                g.len(),
                x.len()
            )
        }
        Ok((
            CpuStorage::F32(cpu::gelu_backward(x, g, self.0)),
            xl.shape().clone(),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = crate::cuda::launch::gelu((x, xl), Some((g, gl)), self.0)?;
        Ok((dx, xl.shape().clone()))
    }
}

pub(crate) fn activation(x: &Tensor, act: Act, ctx: &Ctx) -> Result<Tensor> {
    match act {
        Act::None => Ok(x.clone()),
        _ if ctx.fused_for(&[x]) || ctx.cuda_for(&[x]) => apply1(&x.contiguous()?, Gelu(act)),
        Act::GeluErf => x.gelu_erf(),
        Act::GeluTanh => x.gelu(),
    }
}

/// dx = act'(x) ⊙ dy outside autograd (the hand-written backward pass), x being the
/// activation's input.
pub(crate) fn activation_grad(x: &Tensor, act: Act, dy: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    match act {
        Act::None => Ok(dy.clone()),
        _ if ctx.fused_for(&[x, dy]) || ctx.cuda_for(&[x, dy]) => {
            let op = GeluBackward(act);
            x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)
        }
        _ => candle_core::bail!(
            "gelu: no kernel for the hand-written backward pass of {:?} on {:?}",
            x.dtype(),
            x.device()
        ),
    }
}
