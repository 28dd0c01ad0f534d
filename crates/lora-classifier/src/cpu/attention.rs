//! Multi-head attention: each (batch, head) pair is a rayon task whose GEMMs read that head's
//! columns of Q, K and V in place, so no head transposes or copies are made. Also the masked
//! softmax and head swap that a device without a fused attention composes it from.

use std::mem::MaybeUninit;

use candle_core::{bail, Layout, Result};
use rayon::prelude::*;

use super::matrix::{
    assume_init, assume_init_mut, gemm_into, gemm_raw, uninit_buffer, Mat, SendPtr,
};
use super::rows_per_task;
use super::simd::{dropout_into, softmax_backward_row, softmax_rows};
use crate::dropout_mask::DropKey;

/// Scaled dot-product attention of q [batch, q_len, hidden] over k, v [batch, seq, hidden]
/// (views with unit column stride and any row stride, e.g. slices of GPT-2's fused QKV), the
/// queries being the first q_len positions, with an additive key mask, optionally causal, with
/// dropout on the probabilities [batch, heads, q_len, seq] (its key placed for them). Output
/// [batch, q_len, hidden].
#[derive(Clone, Copy)]
pub(crate) struct Heads<'a> {
    pub heads: usize,
    pub scale: f32,
    pub causal: bool,
    /// [batch, seq] additive bias on the keys (0 or `ops::MASKED`).
    pub mask: &'a [f32],
    pub dropout: Option<DropKey>,
}

/// A [batch, seq, hidden] input: its data from `start`, batch and row strides.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    data: &'a [f32],
    batch: usize,
    row: usize,
}

impl<'a> Rows<'a> {
    /// The tensor of `layout` in the storage `data`; with its dims.
    pub fn new(data: &'a [f32], l: &Layout) -> Result<(Self, [usize; 3])> {
        let (&[b, n, h], &[sb, sr, 1]) = (l.dims(), l.stride()) else {
            bail!("attention: expected [batch, seq, hidden] inputs with unit column stride")
        };
        let data = &data[l.start_offset()..];
        if (b - 1) * sb + (n - 1) * sr + h > data.len() {
            bail!("attention: layout out of bounds")
        }
        Ok((
            Self {
                data,
                batch: sb,
                row: sr,
            },
            [b, n, h],
        ))
    }

    /// Head columns [col, col + d) of batch b: an n × d matrix.
    fn head(&self, b: usize, col: usize, n: usize, d: usize) -> Mat<'a> {
        Mat::strided(&self.data[b * self.batch + col..], n, d, self.row)
    }
}

/// The inputs and [batch, q_len, seq, hidden].
pub(crate) fn inputs<'a>(t: [(&'a [f32], &'a Layout); 3]) -> Result<([Rows<'a>; 3], [usize; 4])> {
    let (q, dq) = Rows::new(t[0].0, t[0].1)?;
    let (k, dk) = Rows::new(t[1].0, t[1].1)?;
    let (v, dv) = Rows::new(t[2].0, t[2].1)?;
    if dk != dv || dq[0] != dk[0] || dq[2] != dk[2] || dq[1] > dk[1] {
        bail!("attention: q, k, v shapes do not fit: {dq:?} {dk:?} {dv:?}")
    }
    Ok(([q, k, v], [dk[0], dq[1], dk[1], dk[2]]))
}

/// Every head's share of the hidden size: the heads together write every output column.
fn head_size(hidden: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        bail!("attention: hidden size {hidden} is not a multiple of {heads} heads")
    }
    Ok(hidden / heads)
}

impl Heads<'_> {
    /// The output [batch, q_len, hidden] and, with `save`, the probabilities (before dropout)
    /// that the backward pass takes; `dims` as [`inputs`] gives them.
    pub fn forward(
        &self,
        [q, k, v]: [Rows; 3],
        dims: [usize; 4],
        save: bool,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let [b, m, n, hid] = dims;
        let (h, d) = (self.heads, head_size(hid, self.heads)?);
        let block = m * n;
        let mut out = uninit_buffer(b * m * hid);
        let mut probs = uninit_buffer(if save { b * h * block } else { 0 });
        let (out_p, probs_p) = (SendPtr::of(&mut out), SendPtr::of(&mut probs));
        (0..b * h).into_par_iter().for_each_init(
            || (uninit_buffer(block), uninit_buffer(block)),
            |(scratch, dropped), t| {
                let (bi, hi) = (t / h, t % h);
                let p: &mut [MaybeUninit<f32>] = if save {
                    // SAFETY: task t alone writes probs[t·block, (t+1)·block).
                    unsafe { std::slice::from_raw_parts_mut(probs_p.add(t * block).cast(), block) }
                } else {
                    &mut scratch[..]
                };
                let (qh, kh, vh) = (
                    q.head(bi, hi * d, m, d),
                    k.head(bi, hi * d, n, d),
                    v.head(bi, hi * d, n, d),
                );
                // S = scale · Q·Kᵀ
                let p = gemm_into(p, qh, kh.t(), self.scale, false);
                softmax_rows(p, n, &self.mask[bi * n..(bi + 1) * n], self.causal);
                let pd: &[f32] = match self.dropout {
                    Some(key) => {
                        dropout_into(p, dropped, t * block, key);
                        // SAFETY: `dropout_into` wrote all of it.
                        unsafe { assume_init_mut(dropped) }
                    }
                    None => p,
                };
                // O = P_d·V into this head's columns of the output.
                // SAFETY: task t alone writes columns [hi·d, (hi+1)·d) of batch bi's rows.
                unsafe {
                    gemm_raw(
                        out_p.add(bi * m * hid + hi * d),
                        hid,
                        false,
                        Mat::of(pd, m, n),
                        vh,
                        1.0,
                        false,
                    )
                };
            },
        );
        // SAFETY: the tasks wrote every head's columns of every row of the output, and every
        // task's block of the probabilities.
        Ok(unsafe { (assume_init(out), assume_init(probs)) })
    }

    /// [dq, dk, dv] for the output gradient `go`, from the probabilities `forward` saved.
    pub fn backward(
        &self,
        [q, k, v]: [Rows; 3],
        go: Rows,
        dims: [usize; 4],
        probs: &[f32],
    ) -> Result<[Vec<f32>; 3]> {
        let [b, m, n, hid] = dims;
        let (h, d) = (self.heads, head_size(hid, self.heads)?);
        let block = m * n;
        if probs.len() != b * h * block {
            bail!("attention: backward pass without the saved probabilities")
        }
        let mut grads = [
            uninit_buffer(b * m * hid),
            uninit_buffer(b * n * hid),
            uninit_buffer(b * n * hid),
        ];
        let [dq, dk, dv] = grads.each_mut().map(|g| SendPtr::of(g));
        (0..b * h).into_par_iter().for_each_init(
            || (uninit_buffer(block), uninit_buffer(block)),
            |(ds, dropped), t| {
                let (bi, hi) = (t / h, t % h);
                let p = &probs[t * block..(t + 1) * block];
                let pd: &[f32] = match self.dropout {
                    Some(key) => {
                        dropout_into(p, dropped, t * block, key);
                        // SAFETY: `dropout_into` wrote all of it.
                        unsafe { assume_init_mut(dropped) }
                    }
                    None => p,
                };
                let (qh, kh, vh) = (
                    q.head(bi, hi * d, m, d),
                    k.head(bi, hi * d, n, d),
                    v.head(bi, hi * d, n, d),
                );
                let gh = go.head(bi, hi * d, m, d);
                // dP_d = dO·Vᵀ, then the softmax (and dropout) backward in place: dS.
                let ds = gemm_into(ds, gh, vh.t(), 1.0, false);
                for ((g, p), pd) in ds.chunks_mut(n).zip(p.chunks(n)).zip(pd.chunks(n)) {
                    softmax_backward_row(g, p, pd, self.scale);
                }
                let (ds, pd) = (Mat::of(ds, m, n), Mat::of(pd, m, n));
                let (at_q, at) = (bi * m * hid + hi * d, bi * n * hid + hi * d);
                // SAFETY: task t alone writes columns [hi·d, (hi+1)·d) of batch bi's rows.
                unsafe {
                    gemm_raw(dv.add(at), hid, false, pd.t(), gh, 1.0, false); // dV = P_dᵀ·dO
                    gemm_raw(dq.add(at_q), hid, false, ds, kh, 1.0, false); // dQ = dS·K
                    gemm_raw(dk.add(at), hid, false, ds.t(), qh, 1.0, false); // dK = dSᵀ·Q
                }
            },
        );
        // SAFETY: the tasks wrote every head's columns of every row of the three gradients.
        Ok(grads.map(|g| unsafe { assume_init(g) }))
    }
}

/// p = softmax(s · scale + key bias (+ causal mask)) over the last dim of s [batch, heads, q, n]
/// (`dims`); `bias` is [batch, n].
pub(crate) fn masked_softmax(
    s: &[f32],
    dims: [usize; 4],
    bias: &[f32],
    causal: bool,
    scale: f32,
) -> Vec<f32> {
    let [_, heads, q, n] = dims;
    let block = q * n;
    let mut p: Vec<f32> = s.par_iter().map(|&x| x * scale).collect();
    p.par_chunks_mut(block).enumerate().for_each(|(t, p)| {
        let bi = t / heads;
        softmax_rows(p, n, &bias[bi * n..(bi + 1) * n], causal);
    });
    p
}

/// The scores' gradient of [`masked_softmax`] from its output p and the gradient g of p, rows of
/// `n` elements.
pub(crate) fn masked_softmax_backward(p: &[f32], g: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let mut ds = g.to_vec();
    let chunk = n * rows_per_task(n);
    ds.par_chunks_mut(chunk)
        .zip(p.par_chunks(chunk))
        .for_each(|(ds, p)| {
            for (ds, p) in ds.chunks_mut(n).zip(p.chunks(n)) {
                softmax_backward_row(ds, p, p, scale);
            }
        });
    ds
}

/// [B, X, Y, D] → [B, Y, X, D] (`dims` = [B, X, Y, D]).
pub(crate) fn swap_middle(x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let [_, nx, ny, d] = dims;
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(nx * d).enumerate().for_each(|(t, out)| {
        let (bi, yi) = (t / ny, t % ny);
        for xi in 0..nx {
            let src = ((bi * nx + xi) * ny + yi) * d;
            out[xi * d..(xi + 1) * d].copy_from_slice(&x[src..src + d]);
        }
    });
    y
}
