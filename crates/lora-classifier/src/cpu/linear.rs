//! Linear layers with frozen weights, alone or with their LoRA branch, as single ops whose
//! backward passes compute only the gradients that train (never the frozen weights').

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::act_inplace;
use super::matrix::{
    assume_init, assume_init_mut, contiguous, data, gemm_acc, product, uninit_buffer, write_copy,
    Mat,
};
use super::packed::PackedLinear;
use super::simd::{add_dropped, add_inplace};
use super::{rows_per_task, CHUNK};
use crate::activation::Act;
use crate::dropout_mask::DropKey;

/// `x · Wᵀ + b` with a frozen weight, stored [out, in] (nn.Linear) or [in, out] (GPT-2's
/// Conv1D). The activation is fused only where no gradient is needed (see `ops::linear`).
pub(crate) struct FrozenLinear {
    pub w: Weight,
    pub b: Option<Tensor>,
    pub conv1d: bool,
    pub act: Act,
}

/// A frozen weight as the kernels take it.
pub(crate) enum Weight {
    /// f32, computed with the `gemm` crate.
    F32(Tensor),
    /// Packed for the bf16 or int8 GEMMs (`packed`).
    Packed(Arc<PackedLinear>),
}

impl FrozenLinear {
    /// (out, in)
    fn dims(&self) -> (usize, usize) {
        let w = match &self.w {
            Weight::F32(w) => w,
            Weight::Packed(p) => return (p.n_out, p.n_in),
        };
        let (a, b) = (w.dims()[0], w.dims()[1]);
        if self.conv1d {
            (b, a)
        } else {
            (a, b)
        }
    }

    /// Wᵀ, [in, out], as a view of the stored weight (no transposed copy).
    fn wt<'a>(&self, w: &'a [f32]) -> Mat<'a> {
        let (n_out, n_in) = self.dims();
        if self.conv1d {
            Mat::of(w, n_in, n_out)
        } else {
            Mat::of(w, n_out, n_in).t()
        }
    }

    /// y = x · Wᵀ + b for x [m, in].
    fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let (n_out, n_in) = self.dims();
        let m = x.len() / n_in;
        let w = match &self.w {
            Weight::F32(w) => data(w),
            Weight::Packed(p) => {
                let b = self.b.as_ref().map(data);
                let b = b.as_ref().map(|b| b.f32()).transpose()?;
                let mut y = uninit_buffer(m * n_out);
                p.forward(x, b, &mut y);
                // SAFETY: `forward` writes every element.
                return Ok(unsafe { assume_init(y) });
            }
        };
        let (x, wt) = (Mat::of(x, m, n_in), self.wt(w.f32()?));
        let Some(b) = &self.b else {
            return Ok(product(x, wt, 1.0));
        };
        let b = data(b);
        let b = b.f32()?;
        let mut y = uninit_buffer(m * n_out);
        y.par_chunks_mut(n_out * rows_per_task(n_out))
            .for_each(|c| c.chunks_mut(n_out).for_each(|r| write_copy(r, b)));
        // SAFETY: every row of the buffer now holds the bias.
        gemm_acc(unsafe { assume_init_mut(&mut y) }, x, wt, 1.0, true);
        // SAFETY: as above.
        Ok(unsafe { assume_init(y) })
    }

    /// The weight is frozen: only the input gradient, dx = dy · W (no weight-gradient GEMM).
    fn input_grad(&self, g: &[f32]) -> Result<Vec<f32>> {
        let (n_out, n_in) = self.dims();
        let m = g.len() / n_out;
        let w = match &self.w {
            Weight::F32(w) => data(w),
            Weight::Packed(p) => {
                let mut dx = uninit_buffer(m * n_in);
                p.input_grad(g, &mut dx)?;
                // SAFETY: `input_grad` writes every element.
                return Ok(unsafe { assume_init(dx) });
            }
        };
        Ok(product(Mat::of(g, m, n_out), self.wt(w.f32()?).t(), 1.0))
    }

    fn out_shape(&self, l: &Layout) -> Shape {
        let mut dims = l.dims().to_vec();
        *dims.last_mut().unwrap() = self.dims().0;
        Shape::from(dims)
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut y = self.forward(contiguous(s, l)?)?;
        act_inplace(self.act, &mut y);
        Ok((CpuStorage::F32(y), self.out_shape(l)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if self.act != Act::None {
            bail!("frozen-linear: a fused activation has no backward pass")
        }
        let grad = grad.contiguous()?;
        let dx = self.input_grad(data(&grad).f32()?)?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// A frozen linear layer and its LoRA branch as one op (args x, A [r, in], B [out, r]):
/// y = x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ. Its backward pass computes dx, dA and dB with a few
/// small GEMMs and no intermediate autograd nodes.
pub(crate) struct LoraLinear {
    pub base: FrozenLinear,
    pub scale: f32,
    pub dropout: Option<DropKey>,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
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
        let (x, a, b) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let (n_out, n_in) = self.base.dims();
        let (m, r) = (x.len() / n_in, a.len() / n_in);
        let dropped = self.dropout.map(|key| key.apply(x));
        let xd = dropped.as_deref().unwrap_or(x);
        let u = product(Mat::of(xd, m, n_in), Mat::of(a, r, n_in).t(), 1.0);
        let mut y = self.base.forward(x)?;
        gemm_acc(
            &mut y,
            Mat::of(&u, m, r),
            Mat::of(b, n_out, r).t(),
            self.scale,
            true,
        );
        Ok((CpuStorage::F32(y), self.base.out_shape(l1)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (xd_, ad, bd, gd) = (data(x), data(a), data(b), data(&grad));
        let (xs, a_, b_, g) = (xd_.f32()?, ad.f32()?, bd.f32()?, gd.f32()?);
        let (n_out, n_in) = self.base.dims();
        let (m, r) = (xs.len() / n_in, a_.len() / n_in);
        let dropped = self.dropout.map(|key| key.apply(xs));
        let xd = Mat::of(dropped.as_deref().unwrap_or(xs), m, n_in);
        let (gm, am, bm) = (
            Mat::of(g, m, n_out),
            Mat::of(a_, r, n_in),
            Mat::of(b_, n_out, r),
        );
        let u = product(xd, am.t(), 1.0); // u = dropout(x)·Aᵀ
        let gu = product(gm, bm, self.scale); // gu = s·dy·B
        let db = product(gm.t(), Mat::of(&u, m, r), self.scale); // dB = s·dyᵀ·u
        let da = product(Mat::of(&gu, m, r).t(), xd, 1.0); // dA = guᵀ·dropout(x)
        let dev = x.device();
        let (da, db) = (
            Tensor::from_vec(da, a.shape(), dev)?,
            Tensor::from_vec(db, b.shape(), dev)?,
        );
        // Layer 0's input needs no gradient: skip the largest GEMM.
        if !x.track_op() {
            return Ok((None, Some(da), Some(db)));
        }
        // dx = dy·W + dropout'(gu·A)
        let mut dx = self.base.input_grad(g)?;
        let lora = product(Mat::of(&gu, m, r), am, 1.0);
        dx.par_chunks_mut(CHUNK)
            .zip(lora.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(i, (d, l))| match self.dropout {
                Some(key) => add_dropped(d, l, i * CHUNK, key),
                None => add_inplace(d, l),
            });
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(da),
            Some(db),
        ))
    }
}
