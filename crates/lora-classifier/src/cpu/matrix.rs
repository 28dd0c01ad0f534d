//! The plumbing the kernels share: output buffers, borrowing a tensor's f32 data, strided
//! matrix views and the GEMM.
//!
//! Output buffers start uninitialised (zeroing them would cost a pass over every activation
//! per step): they are `MaybeUninit` memory that kernels write through raw pointers or
//! `MaybeUninit::write`, and become `Vec<f32>` only by [`assume_init`] once fully written.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, Layout, Result, Storage, StorageRef, Tensor};
use gemm::Parallelism;

/// An output buffer of `n` elements, every one to be written before [`assume_init`].
pub(super) fn uninit_buffer(n: usize) -> Box<[MaybeUninit<f32>]> {
    Box::new_uninit_slice(n)
}

/// The buffer's data, once written.
///
/// # Safety
/// Every element of `buf` has been written.
pub(super) unsafe fn assume_init(buf: Box<[MaybeUninit<f32>]>) -> Vec<f32> {
    // SAFETY: the caller guarantees that all elements are initialised.
    unsafe { buf.assume_init() }.into_vec()
}

/// A written part of an output buffer, as f32.
///
/// # Safety
/// Every element of `part` has been written.
pub(super) unsafe fn assume_init_mut(part: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller guarantees initialisation.
    unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Writes `src` into the front of `dst`.
pub(super) fn write_copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    let src = &src[..dst.len()];
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// A raw output pointer that rayon tasks may share, each writing its own disjoint part.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub *mut f32);
// SAFETY: only used to write disjoint regions from rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Of an output buffer.
    pub fn of(buf: &mut [MaybeUninit<f32>]) -> Self {
        Self(buf.as_mut_ptr().cast())
    }

    /// A method, so that closures capture the (Send) struct and not its raw field.
    pub fn add(self, n: usize) -> *mut f32 {
        self.0.wrapping_add(n)
    }
}

pub(crate) fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("fused cpu kernel: non-contiguous input"),
    }
}

/// A read guard on a CPU tensor's storage, to borrow its contiguous f32 data.
pub(crate) struct Data<'a>(StorageRef<'a>, &'a Layout);

pub(crate) fn data(t: &Tensor) -> Data<'_> {
    let (storage, layout) = t.storage_and_layout();
    Data(storage, layout)
}

impl Data<'_> {
    pub fn f32(&self) -> Result<&[f32]> {
        match &*self.0 {
            Storage::Cpu(s) => contiguous(s, self.1),
            _ => bail!("fused cpu kernel: tensor is not on the cpu"),
        }
    }
}

/// A strided view of an f32 matrix, in bounds by construction.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    ptr: *const f32,
    pub rows: usize,
    pub cols: usize,
    rs: usize,
    cs: usize,
    _data: PhantomData<&'a [f32]>,
}

impl<'a> Mat<'a> {
    /// A row-major rows × cols matrix.
    pub fn of(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// rows × cols, each row `rs` elements after the previous one.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self::general(data, rows, cols, rs, 1)
    }

    /// rows × cols with element (r, c) at `r·rs + c·cs`.
    pub fn general(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < data.len(),
            "matrix view out of bounds"
        );
        Self {
            ptr: data.as_ptr(),
            rows,
            cols,
            rs,
            cs,
            _data: PhantomData,
        }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// dst = beta · a·b (`acc`: dst += beta · a·b), dst row-major with row stride `ld`. Without
/// `acc`, dst is only written (it may be uninitialised memory): the `gemm` crate reads dst
/// only when told to (`read_dst`), and writes zeros for an empty inner dimension.
///
/// # Safety
/// dst must be valid for a.rows × b.cols elements at row stride `ld` and not overlap a or b;
/// with `acc`, those elements must be initialised.
pub(super) unsafe fn gemm_raw(
    dst: *mut f32,
    ld: usize,
    acc: bool,
    a: Mat,
    b: Mat,
    beta: f32,
    parallel: bool,
) {
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
    // SAFETY: the views are in bounds (Mat's invariant); dst as the caller guarantees.
    unsafe {
        gemm::gemm(
            m, n, k, dst, dst_cs, dst_rs, acc, a.ptr, a_cs, a_rs, b.ptr, b_cs, b_rs, 1.0, beta,
            false, false, false, par,
        )
    }
}

/// dst = beta · a·b into a row-major output buffer of exactly a.rows × b.cols elements, all
/// written; returns it as f32.
pub(super) fn gemm_into<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    a: Mat,
    b: Mat,
    beta: f32,
    parallel: bool,
) -> &'d mut [f32] {
    assert_eq!(dst.len(), a.rows * b.cols, "gemm: output size");
    // SAFETY: dst is a distinct, exclusively borrowed buffer of the product's size.
    unsafe {
        gemm_raw(dst.as_mut_ptr().cast(), b.cols, false, a, b, beta, parallel);
        assume_init_mut(dst)
    }
}

/// beta · a·b into a new row-major buffer (GEMM parallel over rayon's threads).
pub(super) fn product(a: Mat, b: Mat, beta: f32) -> Vec<f32> {
    let mut out = uninit_buffer(a.rows * b.cols);
    gemm_into(&mut out, a, b, beta, true);
    // SAFETY: `gemm_into` writes the whole buffer.
    unsafe { assume_init(out) }
}

/// dst += beta · a·b, dst row-major.
pub(super) fn gemm_acc(dst: &mut [f32], a: Mat, b: Mat, beta: f32, parallel: bool) {
    assert!(dst.len() >= a.rows * b.cols, "gemm: output too small");
    // SAFETY: dst is a distinct, large enough, initialised, exclusively borrowed slice.
    unsafe { gemm_raw(dst.as_mut_ptr(), b.cols, true, a, b, beta, parallel) }
}
