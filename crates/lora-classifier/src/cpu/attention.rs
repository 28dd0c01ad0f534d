//! Multi-head attention as one op: each (batch, head) pair is a rayon task whose GEMMs read
//! that head's columns of Q, K and V in place, so no head transposes or copies are made.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::matrix::{
    assume_init, assume_init_mut, gemm_into, gemm_raw, uninit_buffer, Mat, SendPtr,
};
use super::simd::{dropout_into, softmax_backward_row, softmax_rows};
use crate::dropout_mask::DropKey;

/// Scaled dot-product attention of q [batch, q_len, hidden] over k, v [batch, seq, hidden]
/// (views with unit column stride and any row stride, e.g. slices of GPT-2's fused QKV), the
/// queries being the first q_len positions, with an additive key mask, optionally causal, with
/// dropout on the probabilities [batch, heads, q_len, seq] (its key placed for them). Output
/// [batch, q_len, hidden].
pub(crate) struct Attention {
    pub heads: usize,
    pub scale: f32,
    pub causal: bool,
    /// [batch, seq] additive bias on the keys (0 or `ops::MASKED`).
    pub mask: Arc<Vec<f32>>,
    pub dropout: Option<DropKey>,
    /// Keep the probabilities for the backward pass (when an input needs a gradient).
    pub save: bool,
    probs: Mutex<Vec<f32>>,
}

impl Attention {
    pub fn new(heads: usize, scale: f32, causal: bool, mask: Arc<Vec<f32>>) -> Self {
        Self {
            heads,
            scale,
            causal,
            mask,
            dropout: None,
            save: false,
            probs: Mutex::new(Vec::new()),
        }
    }
}

/// A [batch, seq, hidden] input: its data from `start`, batch and row strides.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    batch: usize,
    row: usize,
}

impl<'a> Rows<'a> {
    fn new(s: &'a CpuStorage, l: &Layout) -> Result<(Self, [usize; 3])> {
        let data = s.as_slice::<f32>()?;
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
fn inputs<'a>(t: [(&'a CpuStorage, &'a Layout); 3]) -> Result<([Rows<'a>; 3], [usize; 4])> {
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

fn cpu<'a>(t: &'a candle_core::StorageRef<'_>) -> Result<&'a CpuStorage> {
    match &**t {
        Storage::Cpu(s) => Ok(s),
        _ => bail!("attention: tensor is not on the cpu"),
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
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
        let ([q, k, v], [b, m, n, hid]) = inputs([(s1, l1), (s2, l2), (s3, l3)])?;
        let (h, d) = (self.heads, head_size(hid, self.heads)?);
        let block = m * n;
        let mut out = uninit_buffer(b * m * hid);
        let mut probs = uninit_buffer(if self.save { b * h * block } else { 0 });
        let (out_p, probs_p) = (SendPtr::of(&mut out), SendPtr::of(&mut probs));
        (0..b * h).into_par_iter().for_each_init(
            || (uninit_buffer(block), uninit_buffer(block)),
            |(scratch, dropped), t| {
                let (bi, hi) = (t / h, t % h);
                let p: &mut [MaybeUninit<f32>] = if self.save {
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
        let (out, probs) = unsafe { (assume_init(out), assume_init(probs)) };
        if self.save {
            *self.probs.lock().unwrap() = probs;
        }
        Ok((CpuStorage::F32(out), Shape::from((b, m, hid))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().unwrap();
        if probs.is_empty() {
            bail!("attention: backward pass without saved probabilities")
        }
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let ([q, k, v], [b, m, n, hid]) =
            inputs([(cpu(&qs)?, ql), (cpu(&ks)?, kl), (cpu(&vs)?, vl)])?;
        let (go, _) = Rows::new(cpu(&gs)?, gl)?;
        let (h, d) = (self.heads, head_size(hid, self.heads)?);
        let block = m * n;
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
        let [dq, dk, dv] = grads.map(|g| unsafe { assume_init(g) });
        let dq = Tensor::from_vec(dq, (b, m, hid), &Device::Cpu)?;
        let [dk, dv] = [dk, dv].map(|g| Tensor::from_vec(g, (b, n, hid), &Device::Cpu));
        Ok((Some(dq), Some(dk?), Some(dv?)))
    }
}
