//! LayerNorm with a frozen weight, fused with the residual add and the dropout before it, and
//! its input gradient.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::matrix::{assume_init, assume_init_mut, uninit_buffer, write_copy};
use super::rows_per_task;
use super::simd::{add_into, dropout_add_into, layer_norm_backward_row, layer_norm_row};
use crate::dropout_mask::DropKey;

/// LayerNorm over rows of `w.len()` elements of dropout(x) + r, or of x without `r`.
#[derive(Clone, Copy)]
pub(crate) struct Norm<'a> {
    pub w: &'a [f32],
    pub eps: f32,
    /// Dropout on x before the residual add.
    pub dropout: Option<DropKey>,
}

impl Norm<'_> {
    /// Writes the LayerNorm input, dropout(x) + r (or x), of the elements from `first` on:
    /// all of `dst`.
    fn input(&self, x: &[f32], r: Option<&[f32]>, dst: &mut [MaybeUninit<f32>], first: usize) {
        let x = &x[first..];
        match (r.map(|r| &r[first..]), self.dropout) {
            (Some(r), Some(key)) => dropout_add_into(x, r, dst, first, key),
            (Some(r), None) => add_into(x, r, dst),
            (None, _) => write_copy(dst, x),
        }
    }

    /// y = LayerNorm(dropout(x) + r) · w + b.
    pub fn forward(&self, x: &[f32], r: Option<&[f32]>, b: &[f32]) -> Vec<f32> {
        let w = self.w;
        let chunk = w.len() * rows_per_task(w.len());
        let mut y = uninit_buffer(x.len());
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, y)| {
            self.input(x, r, y, c * chunk);
            // SAFETY: `input` wrote the whole chunk.
            let y = unsafe { assume_init_mut(y) };
            y.chunks_mut(w.len())
                .for_each(|row| layer_norm_row(row, w, b, self.eps));
        });
        // SAFETY: the chunks cover the buffer, each written whole above.
        unsafe { assume_init(y) }
    }

    /// The gradient of the LayerNorm input (= of the residual) for the output gradient `g`.
    pub fn input_grad(&self, x: &[f32], r: Option<&[f32]>, g: &[f32]) -> Vec<f32> {
        let h = self.w.len();
        let chunk = h * rows_per_task(h);
        let mut dsum = uninit_buffer(x.len());
        dsum.par_chunks_mut(chunk).enumerate().for_each_init(
            || vec![0.0; h],
            |xhat, (c, d)| {
                let mut input = uninit_buffer(d.len());
                self.input(x, r, &mut input, c * chunk);
                // SAFETY: `input` wrote all of it.
                let input = unsafe { assume_init(input) };
                let rows = input
                    .chunks(h)
                    .zip(g[c * chunk..].chunks(h))
                    .zip(d.chunks_mut(h));
                for ((s, g), d) in rows {
                    layer_norm_backward_row(s, g, d, self.w, self.eps, xhat);
                }
            },
        );
        // SAFETY: the chunks cover the buffer and `layer_norm_backward_row` writes every row.
        unsafe { assume_init(dsum) }
    }
}
