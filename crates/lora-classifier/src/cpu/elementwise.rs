//! GELU and its exact derivative, and the activations a linear layer may fuse.

use rayon::prelude::*;

use super::matrix::{assume_init, uninit_buffer};
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

/// act(x) into a new buffer (GELU, exact erf or tanh approximation).
pub(crate) fn gelu(x: &[f32], act: Act) -> Vec<f32> {
    let f = match act {
        Act::GeluErf => gelu_erf_map,
        Act::GeluTanh => gelu_tanh_map,
        Act::None => return x.to_vec(),
    };
    let mut y = uninit_buffer(x.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| f(x, y));
    // SAFETY: the chunks cover the buffer and the map writes each whole.
    unsafe { assume_init(y) }
}

/// dx = act'(x) ⊙ g.
pub(crate) fn gelu_backward(x: &[f32], g: &[f32], act: Act) -> Vec<f32> {
    let f = match act {
        Act::GeluErf => gelu_erf_backward,
        Act::GeluTanh => gelu_tanh_backward,
        Act::None => return g.to_vec(),
    };
    let mut dx = uninit_buffer(x.len());
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(dx, (x, g))| f(x, g, dx));
    // SAFETY: the chunks cover the buffer and the backward map writes each whole.
    unsafe { assume_init(dx) }
}
