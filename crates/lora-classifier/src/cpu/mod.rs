//! Fused f32 CPU kernels, run as candle custom ops with exact backward passes.
//!
//! Stock candle spends much of its CPU time around the GEMMs: scalar `erf`, a fresh buffer and
//! an autograd node per elementwise op, transposed copies for attention and, in the backward
//! pass, weight gradients of frozen weights. Here a frozen linear layer is one GEMM with its
//! bias (and GELU when no gradient is needed), and its LoRA branch joins it in the same op,
//! whose backward pass computes dx, dA and dB only; attention reads Q, K, V in place; LayerNorm
//! takes the residual and dropout along; GELU and LayerNorm have hand-written gradients.
//!
//! `ops.rs` calls these only for f32 tensors on the CPU; other devices use composed candle ops.

mod attention;
mod simd;

use std::marker::PhantomData;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, StorageRef,
    Tensor,
};
use common::hash::splitmix64;
use gemm::Parallelism;
use rayon::prelude::*;

pub(crate) use attention::Attention;
use simd::*;

// ---------------------------------------------------------------------------------------------
// Plumbing.

/// glibc malloc: keep freed buffers (up to 32 MiB from the heap, 1 GiB of slack before
/// trimming) so that each step reuses the last step's pages instead of faulting in fresh zeroed
/// ones. Idempotent; a no-op with other C libraries.
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters (under the allocator's own locks).
        ONCE.call_once(|| unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_TOP_PAD, 64 << 20);
        });
    }
}

/// Elements per rayon task in elementwise kernels.
const CHUNK: usize = 16384;

/// Rows per rayon task for row kernels of `row_len` elements.
fn rows_per_task(row_len: usize) -> usize {
    (CHUNK / row_len.max(1)).max(1)
}

fn uninit(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and every caller writes all n elements before
    // reading them (a GEMM without read_dst, or a full copy or map).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

/// A raw output pointer that rayon tasks may share, each writing its own disjoint part.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to write disjoint regions from rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method, so that closures capture the (Send) struct and not its raw field.
    fn add(self, n: usize) -> *mut f32 {
        self.0.wrapping_add(n)
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("fused cpu kernel: non-contiguous input"),
    }
}

/// A read guard on a CPU tensor's storage, to borrow its contiguous f32 data.
struct Data<'a>(StorageRef<'a>, &'a Layout);

fn data(t: &Tensor) -> Data<'_> {
    let (storage, layout) = t.storage_and_layout();
    Data(storage, layout)
}

impl Data<'_> {
    fn f32(&self) -> Result<&[f32]> {
        match &*self.0 {
            Storage::Cpu(s) => contiguous(s, self.1),
            _ => bail!("fused cpu kernel: tensor is not on the cpu"),
        }
    }
}

/// A strided view of an f32 matrix, in bounds by construction.
#[derive(Clone, Copy)]
struct Mat<'a> {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    _data: PhantomData<&'a [f32]>,
}

impl<'a> Mat<'a> {
    /// A row-major rows × cols matrix.
    fn of(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// rows × cols, each row `rs` elements after the previous one.
    fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        assert!(
            rows == 0 || (rows - 1) * rs + cols <= data.len(),
            "matrix view out of bounds"
        );
        Self {
            ptr: data.as_ptr(),
            rows,
            cols,
            rs,
            cs: 1,
            _data: PhantomData,
        }
    }

    /// The transpose, as a view.
    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// dst = beta · a·b (`acc`: dst += beta · a·b), dst row-major with row stride `ld`.
///
/// # Safety
/// dst must be valid for a.rows × b.cols elements at row stride `ld` and not overlap a or b.
unsafe fn gemm_raw(dst: *mut f32, ld: usize, acc: bool, a: Mat, b: Mat, beta: f32, parallel: bool) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k >= 1 << 18 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let (dst_cs, dst_rs) = (1, ld as isize);
    let (a_cs, a_rs, b_cs, b_rs) = (a.cs as isize, a.rs as isize, b.cs as isize, b.rs as isize);
    gemm::gemm(
        m, n, k, dst, dst_cs, dst_rs, acc, a.ptr, a_cs, a_rs, b.ptr, b_cs, b_rs, 1.0, beta, false,
        false, false, par,
    )
}

/// `gemm_raw` into a row-major slice.
fn gemm(dst: &mut [f32], acc: bool, a: Mat, b: Mat, beta: f32, parallel: bool) {
    assert!(dst.len() >= a.rows * b.cols, "gemm: output too small");
    // SAFETY: dst is a distinct, large enough, exclusively borrowed slice.
    unsafe { gemm_raw(dst.as_mut_ptr(), b.cols, acc, a, b, beta, parallel) }
}

// ---------------------------------------------------------------------------------------------
// Dropout masks from a counter-based hash: reproducible from (seed, site, element index) on any
// device and thread count, independent of candle's (on the CPU unseedable) RNG.

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DropKey {
    k0: u32,
    k1: u32,
    threshold: u32,
    scale: f32,
}

/// Chris Wellons' lowbias32.
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

impl DropKey {
    /// Zeroes each element with probability `p` and scales the rest by 1/(1-p).
    pub(crate) fn new(p: f64, seed: u64, site: u64) -> Self {
        let h = splitmix64(seed ^ splitmix64(site));
        let threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        let scale = if p >= 1.0 {
            0.0
        } else {
            (1.0 / (1.0 - p)) as f32
        };
        Self {
            k0: h as u32,
            k1: (h >> 32) as u32,
            threshold,
            scale,
        }
    }

    #[inline(always)]
    fn factor(&self, i: u32) -> f32 {
        if hash32(hash32(i ^ self.k0) ^ self.k1) >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// The mask of `n` elements, for the composed path on other devices.
    pub(crate) fn mask(&self, n: usize) -> Vec<f32> {
        let mut v = uninit(n);
        v.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| dropout_factors(c, i * CHUNK, *self));
        v
    }

    /// dropout(x) into a new buffer.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = uninit(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(i, (y, x))| dropout_into(x, y, i * CHUNK, *self));
        y
    }
}

// ---------------------------------------------------------------------------------------------
// Ops.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    None,
    GeluErf,
    GeluTanh,
}

fn act_inplace(act: Act, v: &mut [f32]) {
    let f = match act {
        Act::None => return,
        Act::GeluErf => gelu_erf_inplace,
        Act::GeluTanh => gelu_tanh_inplace,
    };
    v.par_chunks_mut(CHUNK).for_each(f);
}

/// `x · Wᵀ + b` with a frozen weight, stored [out, in] (nn.Linear) or [in, out] (GPT-2's
/// Conv1D). The activation is fused only where no gradient is needed (see `ops::linear`).
pub(crate) struct FrozenLinear {
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub conv1d: bool,
    pub act: Act,
}

impl FrozenLinear {
    /// (out, in)
    fn dims(&self) -> (usize, usize) {
        let (a, b) = (self.w.dims()[0], self.w.dims()[1]);
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
        let mut y = uninit(m * n_out);
        if let Some(b) = &self.b {
            let b = data(b);
            let b = b.f32()?;
            y.par_chunks_mut(n_out * rows_per_task(n_out))
                .for_each(|c| c.chunks_mut(n_out).for_each(|r| r.copy_from_slice(b)));
        }
        let w = data(&self.w);
        gemm(
            &mut y,
            self.b.is_some(),
            Mat::of(x, m, n_in),
            self.wt(w.f32()?),
            1.0,
            true,
        );
        Ok(y)
    }

    /// The weight is frozen: only the input gradient, dx = dy · W (no weight-gradient GEMM).
    fn input_grad(&self, g: &[f32]) -> Result<Vec<f32>> {
        let (n_out, n_in) = self.dims();
        let m = g.len() / n_out;
        let mut dx = uninit(m * n_in);
        let w = data(&self.w);
        gemm(
            &mut dx,
            false,
            Mat::of(g, m, n_out),
            self.wt(w.f32()?).t(),
            1.0,
            true,
        );
        Ok(dx)
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
        let mut u = uninit(m * r);
        gemm(
            &mut u,
            false,
            Mat::of(xd, m, n_in),
            Mat::of(a, r, n_in).t(),
            1.0,
            true,
        );
        let mut y = self.base.forward(x)?;
        gemm(
            &mut y,
            true,
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
        let (mut u, mut gu) = (uninit(m * r), uninit(m * r));
        let (mut da, mut db) = (uninit(r * n_in), uninit(n_out * r));
        gemm(&mut u, false, xd, am.t(), 1.0, true); // u = dropout(x)·Aᵀ
        gemm(&mut gu, false, gm, bm, self.scale, true); // gu = s·dy·B
        gemm(&mut db, false, gm.t(), Mat::of(&u, m, r), self.scale, true); // dB = s·dyᵀ·u
        gemm(&mut da, false, Mat::of(&gu, m, r).t(), xd, 1.0, true); // dA = guᵀ·dropout(x)
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
        let mut lora = uninit(m * n_in);
        gemm(&mut lora, false, Mat::of(&gu, m, r), am, 1.0, true);
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
        let mut y = uninit(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| f(x, y));
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
        let mut dx = uninit(xs.len());
        dx.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(dx, (x, g))| f(x, g, dx));
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

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
    /// Writes the LayerNorm input, dropout(x) + r (or x), of the elements from `first` on.
    fn input(&self, x: &[f32], r: Option<&[f32]>, dst: &mut [f32], first: usize) {
        let x = &x[first..];
        match (r.map(|r| &r[first..]), self.dropout) {
            (Some(r), Some(key)) => dropout_add_into(x, r, dst, first, key),
            (Some(r), None) => add_into(x, r, dst),
            (None, _) => dst.copy_from_slice(&x[..dst.len()]),
        }
    }

    fn forward(&self, x: &[f32], r: Option<&[f32]>, b: &[f32]) -> Result<Vec<f32>> {
        let w = data(&self.w);
        let w = w.f32()?;
        let chunk = w.len() * rows_per_task(w.len());
        let mut y = uninit(x.len());
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, y)| {
            self.input(x, r, y, c * chunk);
            y.chunks_mut(w.len())
                .for_each(|row| layer_norm_row(row, w, b, self.eps));
        });
        Ok(y)
    }

    /// The gradients of the LayerNorm input (= of the residual) and of the bias.
    fn backward(&self, x: &Tensor, r: Option<&Tensor>, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let (xd, gd, wd, rd) = (data(x), data(&grad), data(&self.w), r.map(data));
        let (xs, g, w) = (xd.f32()?, gd.f32()?, wd.f32()?);
        let r = rd.as_ref().map(|d| d.f32()).transpose()?;
        let h = w.len();
        let chunk = h * rows_per_task(h);
        let mut dsum = uninit(xs.len());
        let acc = dsum
            .par_chunks_mut(chunk)
            .enumerate()
            .map(|(c, d)| {
                let mut input = uninit(d.len());
                self.input(xs, r, &mut input, c * chunk);
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

/// Elementwise dropout; its backward pass applies the same mask to the gradient.
pub(crate) struct Dropout(pub DropKey);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(self.0.apply(contiguous(s, l)?)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}
