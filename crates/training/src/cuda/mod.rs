//! The fused AdamW step on CUDA (`optim.cu`): one launch per parameter updates the parameter and
//! both moment estimates in place, with the composed ops' rounding (see the kernel). On other
//! devices, and for the other optimizers, `optim` composes candle ops.

// Without the `cuda` feature the launch is compiled out and the op is never built.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use candle_core::{bail, CpuStorage, InplaceOp1, Layout, Result, Tensor};

use crate::optim::AdamScalars;

/// p ← AdamW(p, g, m, v) in place, m and v too: the op runs on p, holding g, m and v. m and v
/// are the optimizer's own state buffers, shared with no other tensor, so writing them in place
/// (on the same stream as every other launch) is sound.
pub(crate) struct AdamWStep<'a> {
    pub g: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub s: AdamScalars,
}

impl InplaceOp1 for AdamWStep<'_> {
    fn name(&self) -> &'static str {
        "cuda-adamw"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        bail!("cuda-adamw: a CUDA kernel, called on CPU tensors (optim composes ops there)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, p: &mut candle_core::CudaStorage, pl: &Layout) -> Result<()> {
        launch::adamw(self, p, pl)
    }
}

#[cfg(feature = "cuda")]
mod launch {
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{bail, CudaStorage, Layout, Result, Storage, Tensor};

    use super::AdamWStep;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/optim_kernels.ptx"));
    const MODULE: &str = "training_optim_kernels";

    fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
        let CudaStorageSlice::F32(slice) = &s.slice else {
            bail!("cuda-adamw: {what} is not f32")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("cuda-adamw: {what} is not contiguous")
        };
        Ok(slice.slice(start..end))
    }

    pub(super) fn adamw(op: &AdamWStep, p: &mut CudaStorage, pl: &Layout) -> Result<()> {
        let n = pl.shape().elem_count();
        let held = |t: &Tensor, what: &str| -> Result<()> {
            if t.elem_count() != n || !t.device().is_cuda() {
                bail!(
                    "cuda-adamw: {what} {:?} does not match the parameter {:?}",
                    t.dims(),
                    pl.dims()
                )
            }
            Ok(())
        };
        held(op.g, "the gradient")?;
        held(op.m, "exp_avg")?;
        held(op.v, "exp_avg_sq")?;
        let (gs, gl) = op.g.storage_and_layout();
        let (ms, ml) = op.m.storage_and_layout();
        let (vs, vl) = op.v.storage_and_layout();
        let (Storage::Cuda(gs), Storage::Cuda(ms), Storage::Cuda(vs)) = (&*gs, &*ms, &*vs) else {
            bail!("cuda-adamw: the gradient and the state must be on the CUDA device")
        };
        let (g, m, v) = (
            f32_view(gs, gl, "the gradient")?,
            f32_view(ms, ml, "exp_avg")?,
            f32_view(vs, vl, "exp_avg_sq")?,
        );
        let dev = p.device.clone();
        let pv = f32_view(p, pl, "the parameter")?;
        let n = u32::try_from(n)
            .map_err(|_| candle_core::Error::Msg("cuda-adamw: over 2^32 elements".into()))?;
        let s = op.s;
        let f = dev.get_or_load_custom_func("adamw_f32", MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(&pv).arg(&g).arg(&m).arg(&v);
        let (lerp_w, lerp_from_end) = if s.w < 0.5 {
            (s.w, 0i32)
        } else {
            (1.0 - s.w, 1i32)
        };
        candle_core::builder_arg!(
            b,
            n,
            s.decay as f32,
            lerp_w as f32,
            lerp_from_end,
            s.beta2 as f32,
            (1.0 - s.beta2) as f32,
            (1.0 / s.bias_correction2.sqrt()) as f32,
            s.eps as f32,
            (-s.step_size) as f32
        );
        let cfg = LaunchConfig {
            grid_dim: ((n as usize).div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: p, g, m and v hold n f32 values each, contiguous; the kernel writes p, m, v.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}
