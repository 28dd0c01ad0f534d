//! Linear layers with frozen weights, alone or with their LoRA branch, and their backward
//! passes, which compute only the gradients that train (never the frozen weights').

use rayon::prelude::*;

use super::dropout::dropout;
use super::elementwise::act_inplace;
use super::matrix::{
    assume_init, assume_init_mut, gemm_acc, product, uninit_buffer, write_copy, Mat,
};
use super::packed::PackedLinear;
use super::simd::{add_dropped, add_inplace};
use super::{rows_per_task, CHUNK};
use crate::activation::Act;
use crate::dropout_mask::DropKey;

/// A frozen weight as the kernels take it.
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a> {
    /// f32, stored [out, in] (nn.Linear) or, with `conv1d`, [in, out] (GPT-2's Conv1D);
    /// computed with the `gemm` crate.
    F32 { w: &'a [f32], conv1d: bool },
    /// Packed for the bf16 or int8 GEMMs (`packed`).
    Packed(&'a PackedLinear),
}

/// `x · Wᵀ + b` with a frozen weight of `n_out` × `n_in`.
#[derive(Clone, Copy)]
pub(crate) struct Linear<'a> {
    pub w: Weight<'a>,
    pub b: Option<&'a [f32]>,
    pub n_out: usize,
    pub n_in: usize,
}

/// The gradients of a LoRA linear layer's input (when asked for) and of A and B.
pub(crate) struct LoraGrads {
    pub dx: Option<Vec<f32>>,
    pub da: Vec<f32>,
    pub db: Vec<f32>,
}

impl Linear<'_> {
    /// Wᵀ, [in, out], as a view of the stored weight (no transposed copy).
    fn wt<'w>(&self, w: &'w [f32], conv1d: bool) -> Mat<'w> {
        if conv1d {
            Mat::of(w, self.n_in, self.n_out)
        } else {
            Mat::of(w, self.n_out, self.n_in).t()
        }
    }

    /// y = act(x · Wᵀ + b) for x [m, in].
    pub fn forward(&self, x: &[f32], act: Act) -> Vec<f32> {
        let mut y = self.affine(x);
        act_inplace(act, &mut y);
        y
    }

    fn affine(&self, x: &[f32]) -> Vec<f32> {
        let (n_out, n_in) = (self.n_out, self.n_in);
        let m = x.len() / n_in;
        let (w, conv1d) = match self.w {
            Weight::F32 { w, conv1d } => (w, conv1d),
            Weight::Packed(p) => {
                let mut y = uninit_buffer(m * n_out);
                p.forward(x, self.b, &mut y);
                // SAFETY: `forward` writes every element.
                return unsafe { assume_init(y) };
            }
        };
        let (x, wt) = (Mat::of(x, m, n_in), self.wt(w, conv1d));
        let Some(b) = self.b else {
            return product(x, wt, 1.0);
        };
        let mut y = uninit_buffer(m * n_out);
        y.par_chunks_mut(n_out * rows_per_task(n_out))
            .for_each(|c| c.chunks_mut(n_out).for_each(|r| write_copy(r, b)));
        // SAFETY: every row of the buffer now holds the bias.
        gemm_acc(unsafe { assume_init_mut(&mut y) }, x, wt, 1.0, true);
        // SAFETY: as above.
        unsafe { assume_init(y) }
    }

    /// The weight is frozen: only the input gradient, dx = dy · W (no weight-gradient GEMM).
    pub fn input_grad(&self, g: &[f32]) -> candle_core::Result<Vec<f32>> {
        let m = g.len() / self.n_out;
        let (w, conv1d) = match self.w {
            Weight::F32 { w, conv1d } => (w, conv1d),
            Weight::Packed(p) => {
                let mut dx = uninit_buffer(m * self.n_in);
                p.input_grad(g, &mut dx)?;
                // SAFETY: `input_grad` writes every element.
                return Ok(unsafe { assume_init(dx) });
            }
        };
        Ok(product(
            Mat::of(g, m, self.n_out),
            self.wt(w, conv1d).t(),
            1.0,
        ))
    }

    /// y = x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ for A [r, in], B [out, r].
    pub fn lora_forward(
        &self,
        x: &[f32],
        a: &[f32],
        b: &[f32],
        scale: f32,
        key: Option<DropKey>,
    ) -> Vec<f32> {
        let (n_out, n_in) = (self.n_out, self.n_in);
        let (m, r) = (x.len() / n_in, a.len() / n_in);
        let dropped = key.map(|key| dropout(x, key));
        let xd = dropped.as_deref().unwrap_or(x);
        let u = product(Mat::of(xd, m, n_in), Mat::of(a, r, n_in).t(), 1.0);
        let mut y = self.affine(x);
        gemm_acc(
            &mut y,
            Mat::of(&u, m, r),
            Mat::of(b, n_out, r).t(),
            scale,
            true,
        );
        y
    }

    /// The LoRA layer's gradients for the output gradient `g`, with a few small GEMMs; dx only
    /// with `input_grad` (layer 0's input needs none: the largest GEMM is skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn lora_backward(
        &self,
        x: &[f32],
        a: &[f32],
        b: &[f32],
        g: &[f32],
        scale: f32,
        key: Option<DropKey>,
        input_grad: bool,
    ) -> candle_core::Result<LoraGrads> {
        let (n_out, n_in) = (self.n_out, self.n_in);
        let (m, r) = (x.len() / n_in, a.len() / n_in);
        let dropped = key.map(|key| dropout(x, key));
        let xd = Mat::of(dropped.as_deref().unwrap_or(x), m, n_in);
        let (gm, am, bm) = (
            Mat::of(g, m, n_out),
            Mat::of(a, r, n_in),
            Mat::of(b, n_out, r),
        );
        let u = product(xd, am.t(), 1.0); // u = dropout(x)·Aᵀ
        let gu = product(gm, bm, scale); // gu = s·dy·B
        let db = product(gm.t(), Mat::of(&u, m, r), scale); // dB = s·dyᵀ·u
        let da = product(Mat::of(&gu, m, r).t(), xd, 1.0); // dA = guᵀ·dropout(x)
        if !input_grad {
            return Ok(LoraGrads { dx: None, da, db });
        }
        // dx = dy·W + dropout'(gu·A)
        let mut dx = self.input_grad(g)?;
        let lora = product(Mat::of(&gu, m, r), am, 1.0);
        dx.par_chunks_mut(CHUNK)
            .zip(lora.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(i, (d, l))| match key {
                Some(key) => add_dropped(d, l, i * CHUNK, key),
                None => add_inplace(d, l),
            });
        Ok(LoraGrads {
            dx: Some(dx),
            da,
            db,
        })
    }
}
