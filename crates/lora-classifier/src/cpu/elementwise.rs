//! GELU as an op with its exact derivative, and the activations a linear layer may fuse.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matrix::{assume_init, contiguous, data, uninit_buffer};
use super::simd::{
    gelu_erf_backward, gelu_erf_inplace, gelu_erf_map, gelu_tanh_backward, gelu_tanh_inplace,
    gelu_tanh_map,
};
use super::CHUNK;
use crate::activation::Act;

pub(super) fn act_inplace(act: Act, v: &mut [f32]) {
    let f = match act {
        Act::None => return,
        Act::GeluErf => gelu_erf_inplace,
        Act::GeluTanh => gelu_tanh_inplace,
    };
    v.par_chunks_mut(CHUNK).for_each(f);
}

/// GELU (exact erf or tanh approximation) with its derivative as backward pass.
pub(crate) struct Gelu(pub Act);

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let f = match self.0 {
            Act::GeluErf => gelu_erf_map,
            Act::GeluTanh => gelu_tanh_map,
            Act::None => return Ok((CpuStorage::F32(x.to_vec()), l.shape().clone())),
        };
        let mut y = uninit_buffer(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| f(x, y));
        // SAFETY: the chunks cover the buffer and the map writes each whole.
        let y = unsafe { assume_init(y) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let f = match self.0 {
            Act::GeluErf => gelu_erf_backward,
            Act::GeluTanh => gelu_tanh_backward,
            Act::None => return Ok(Some(grad.clone())),
        };
        let grad = grad.contiguous()?;
        let (xd, gd) = (data(x), data(&grad));
        let (xs, g) = (xd.f32()?, gd.f32()?);
        let mut dx = uninit_buffer(xs.len());
        dx.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(dx, (x, g))| f(x, g, dx));
        // SAFETY: the chunks cover the buffer and the backward map writes each whole.
        let dx = unsafe { assume_init(dx) };
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
