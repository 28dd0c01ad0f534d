//! LayerNorm with a frozen weight, fused with the residual add and the dropout before it,
//! with a hand-written backward pass.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::dropout::Dropout;
use super::matrix::{assume_init, assume_init_mut, contiguous, data, uninit_buffer, write_copy};
use super::rows_per_task;
use super::simd::{add_into, dropout_add_into, layer_norm_backward_row, layer_norm_row, NormGrads};
use crate::dropout_mask::DropKey;

/// LayerNorm over the last dimension of dropout(x) + residual (a CustomOp3 on x, residual,
/// bias) or of x (a CustomOp2 on x, bias). The weight is frozen and held here; the bias may
/// train (PEFT's bias = "all").
pub(crate) struct LayerNorm {
    pub w: Tensor,
    pub eps: f32,
    /// Dropout on x before the residual add.
    pub dropout: Option<DropKey>,
}

impl LayerNorm {
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

    fn forward(&self, x: &[f32], r: Option<&[f32]>, b: &[f32]) -> Result<Vec<f32>> {
        let w = data(&self.w);
        let w = w.f32()?;
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
        Ok(unsafe { assume_init(y) })
    }

    /// The gradients of the LayerNorm input (= of the residual) and of the bias.
    fn backward(&self, x: &Tensor, r: Option<&Tensor>, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let (xd, gd, wd, rd) = (data(x), data(&grad), data(&self.w), r.map(data));
        let (xs, g, w) = (xd.f32()?, gd.f32()?, wd.f32()?);
        let r = rd.as_ref().map(|d| d.f32()).transpose()?;
        let h = w.len();
        let chunk = h * rows_per_task(h);
        let mut dsum = uninit_buffer(xs.len());
        let acc = dsum
            .par_chunks_mut(chunk)
            .enumerate()
            .map(|(c, d)| {
                let mut input = uninit_buffer(d.len());
                self.input(xs, r, &mut input, c * chunk);
                // SAFETY: `input` wrote all of it.
                let input = unsafe { assume_init(input) };
                let mut acc = NormGrads::new(h);
                let rows = input
                    .chunks(h)
                    .zip(g[c * chunk..].chunks(h))
                    .zip(d.chunks_mut(h));
                for ((s, g), d) in rows {
                    layer_norm_backward_row(s, g, d, w, self.eps, &mut acc);
                }
                acc
            })
            .reduce(|| NormGrads::new(h), NormGrads::merge);
        // SAFETY: the chunks cover the buffer and `layer_norm_backward_row` writes every row.
        let dsum = unsafe { assume_init(dsum) };
        let dev = x.device();
        Ok((
            Tensor::from_vec(dsum, x.shape(), dev)?,
            Tensor::from_vec(acc.db, h, dev)?,
        ))
    }
}

impl CustomOp2 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = self.forward(contiguous(s1, l1)?, None, contiguous(s2, l2)?)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, db) = self.backward(x, None, grad)?;
        Ok((Some(dx), Some(db)))
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, r, b) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let y = self.forward(x, Some(r), b)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dsum, db) = self.backward(x, Some(r), grad)?;
        let dx = match self.dropout {
            Some(key) => dsum.apply_op1_no_bwd(&Dropout(key))?,
            None => dsum.clone(),
        };
        Ok((Some(dx), Some(dsum), Some(db)))
    }
}
