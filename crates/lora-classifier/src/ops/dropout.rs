//! Dropout with the masks of `crate::dropout_mask`: the same mask on every device.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

use super::{apply1, Ctx};
use crate::cpu;
use crate::dropout_mask::DropKey;

/// Elementwise dropout, y = x · factor(i); its backward pass applies the same mask to the
/// gradient.
#[derive(Clone, Copy)]
pub(crate) struct Dropout(pub DropKey);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = cpu::dropout(cpu::contiguous(s, l)?, self.0);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::cuda::launch::dropout((s, l), self.0)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

pub(crate) fn dropout(x: &Tensor, key: Option<DropKey>, ctx: &Ctx) -> Result<Tensor> {
    let Some(key) = ctx.place(key, x.dim(D::Minus1)?) else {
        return Ok(x.clone());
    };
    // The CUDA kernel reads masks at consecutive indices only.
    if ctx.fused_for(&[x]) || (ctx.cuda_for(&[x]) && key.is_identity()) {
        return apply1(&x.contiguous()?, Dropout(key));
    }
    // In f32, as the kernels compute: 1/(1-p) is not exact in bf16.
    let mask = cpu::dropout_mask(key, x.elem_count());
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    (x.to_dtype(DType::F32)? * mask)?.to_dtype(x.dtype())
}
