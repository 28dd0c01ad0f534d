//! Inference attention with bf16 products: S = scale·Q·Kᵀ and O = P·V on AVX512-BF16
//! (`vdpbf16ps`, f32 accumulation), Q, K, V and P rounded to bf16 (to nearest even), the
//! masked softmax in f32 in between, as PyTorch's autocast computes attention. Models whose
//! frozen weights are bf16 on the CPU allow it (`Heads::bf16_products`) where no probabilities
//! are kept for a backward pass and no dropout applies; everything else, and every CPU
//! without avx512bf16 (or with `IMDB_LORA_CPU_ISA=portable`), runs `Heads::forward`'s f32 path.
//! The models do not ask for it yet (`ops::attention`'s `BF16_ATTENTION`: not measurably faster
//! at 128 tokens).
//!
//! One rayon task per (batch, head), as the f32 path: the head's Q rows become bf16 pairs (the
//! A operand), its K and V are packed into panels of at most [`W`] columns (each 32-bit lane
//! two consecutive k of one column: pairs of d for Kᵀ, pairs of keys for V), odd k padded with
//! a zero, and tiles of up to 8 rows × 4 vectors accumulate in registers. Then 24 query rows
//! at a time: their scores, their softmax (`simd::softmax_rows_unscaled`: `softmax_rows`' f32
//! operations, the last one, the scaling, here with the conversion to bf16) and their output,
//! S and P staying in L1.
//! The next task's Q, K and V rows are prefetched: the f32 GEMM hid those reads behind its
//! arithmetic, this one would wait for them.

use candle_core::Result;

use super::attention::{Heads, Rows};

/// O [batch, q_len, hidden] of `heads` with bf16 products, or `None` where this CPU cannot
/// (no avx512bf16, not x86-64, or `IMDB_LORA_CPU_ISA=portable`): the caller then runs f32.
/// For inference only: no probabilities are kept, and `heads.dropout` must be `None`.
pub(super) fn forward(heads: &Heads, qkv: [Rows; 3], dims: [usize; 4]) -> Result<Option<Vec<f32>>> {
    if heads.dropout.is_some() {
        candle_core::bail!("attention: the bf16 products are for inference, without dropout")
    }
    #[cfg(target_arch = "x86_64")]
    if available() {
        return x86::forward(heads, qkv, dims).map(Some);
    }
    let _ = (qkv, dims);
    Ok(None)
}

/// Whether [`forward`] runs here: the CPU has AVX512-BF16 (and AVX512F, AVX512BW) and the bf16
/// GEMMs run native code on it (`Isa::detect`: not `IMDB_LORA_CPU_ISA=portable`).
pub(super) fn available() -> bool {
    use super::packed::{Isa, Precision};
    #[cfg(target_arch = "x86_64")]
    {
        Isa::detect(Precision::Bf16).native()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = Isa::detect(Precision::Bf16);
        false
    }
}

/// Columns of B per panel: [`x86`]'s tiles hold at most 4 vectors of 16.
const W: usize = 64;

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::incompatible_msrv)]

    use std::arch::x86_64::*;

    use candle_core::Result;
    use rayon::prelude::*;

    use super::super::attention::{head_size, Heads, Rows};
    use super::super::matrix::{assume_init, uninit_buffer, SendPtr};
    use super::super::simd::softmax_rows_unscaled;
    use super::W;

    /// B [k, cols] in bf16, packed: panel p (columns [p·W, p·W + W)) starts at p·groups·W and
    /// holds, for each of the `groups` = ⌈k/2⌉ pairs of k, `lanes(p)` 32-bit lanes: column
    /// c's values at k = 2g (low half) and 2g + 1 (high half, 0 past k). Lanes past the last
    /// column are 0 (and never stored from).
    struct Panels {
        groups: usize,
        cols: usize,
    }

    impl Panels {
        fn len(&self) -> usize {
            self.cols.div_ceil(W) * self.groups * W
        }

        fn count(&self) -> usize {
            self.cols.div_ceil(W)
        }

        /// 16-lane vectors of panel p.
        fn vectors(&self, p: usize) -> usize {
            (self.cols - p * W).min(W).div_ceil(16)
        }

        /// Where column c's lane of group g is.
        fn at(&self, g: usize, c: usize) -> usize {
            let p = c / W;
            p * self.groups * W + g * 16 * self.vectors(p) + c % W
        }
    }

    /// A task's buffers, reused across its (batch, head) pairs.
    #[derive(Default)]
    struct Scratch {
        /// Q's rows as bf16 pairs [m, ⌈d/2⌉].
        a: Vec<u32>,
        /// K's rows as bf16 pairs [n, ⌈d/2⌉].
        k: Vec<u32>,
        /// Kᵀ [d, n] and V [n, d], packed.
        kt: Vec<u32>,
        v: Vec<u32>,
        /// S of [`RB`] query rows [RB, n], then their exponentials; their P as bf16 pairs
        /// [RB, ⌈n/2⌉], and each row's 1 / Σ exp.
        s: Vec<f32>,
        p: Vec<u32>,
        inv: Vec<f32>,
    }

    /// Query rows per block: a multiple of the tiles' 6 and 8 rows.
    const RB: usize = 24;

    fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
        if v.len() < n {
            v.resize(n, T::default());
        }
    }

    pub(super) fn forward(
        heads: &Heads,
        [q, k, v]: [Rows; 3],
        dims: [usize; 4],
    ) -> Result<Vec<f32>> {
        let [b, m, n, hid] = dims;
        let (h, d) = (heads.heads, head_size(hid, heads.heads)?);
        let (gd, gn) = (d.div_ceil(2), n.div_ceil(2));
        if n * gd > i32::MAX as usize {
            candle_core::bail!("attention: {n} keys of {gd} lanes are too many for the gathers")
        }
        // Kᵀ: k = d, columns = keys; V: k = keys, columns = d.
        let kt = Panels {
            groups: gd,
            cols: n,
        };
        let vp = Panels {
            groups: gn,
            cols: d,
        };
        let mut out = uninit_buffer(b * m * hid);
        let out_p = SendPtr::of(&mut out);
        (0..b * h)
            .into_par_iter()
            .for_each_init(Scratch::default, |s, t| {
                let (bi, hi) = (t / h, t % h);
                let col = hi * d;
                // The next task's rows, most likely this thread's next: fetched while this
                // one computes (each row's d values are a line or two of their own).
                if t + 1 < b * h {
                    let (bn, cn) = ((t + 1) / h, (t + 1) % h * d);
                    for (x, rows) in [(&q, m), (&k, n), (&v, n)] {
                        for i in 0..rows {
                            prefetch(x.row(bn, i, cn, d));
                        }
                    }
                }
                grow(&mut s.a, m * gd);
                grow(&mut s.k, n * gd);
                grow(&mut s.kt, kt.len());
                grow(&mut s.v, vp.len());
                grow(&mut s.s, RB * n);
                grow(&mut s.p, RB * gn);
                grow(&mut s.inv, RB);
                // SAFETY (all unsafe blocks): `forward` runs this module only after detecting
                // avx512f, avx512bw and avx512bf16; the buffers have the sizes grown above, and
                // task t alone writes columns [col, col + d) of batch bi's m rows of the output.
                unsafe {
                    for j in 0..n {
                        row_pairs(k.row(bi, j, col, d), 1.0, s.k[j * gd..].as_mut_ptr());
                    }
                    pack_kt(&s.k[..n * gd], gd, &kt, &mut s.kt);
                    pack_v(|j| v.row(bi, j, col, d), n, &vp, &mut s.v);
                    for i in 0..m {
                        row_pairs(q.row(bi, i, col, d), 1.0, s.a[i * gd..].as_mut_ptr());
                    }
                }
                let bias = &heads.mask[bi * n..(bi + 1) * n];
                // RB query rows at a time, their scores and probabilities staying in L1.
                for r0 in (0..m).step_by(RB) {
                    let rows = RB.min(m - r0);
                    let sc = &mut s.s[..rows * n];
                    // S = scale · Q·Kᵀ
                    // SAFETY: as above.
                    unsafe {
                        let qa = &s.a[r0 * gd..];
                        gemm(rows, qa, gd, &s.kt, &kt, sc.as_mut_ptr(), n, heads.scale)
                    };
                    // P = softmax(S + mask) in f32, rounded to bf16 pairs as it is scaled.
                    let inv = &mut s.inv[..rows];
                    softmax_rows_unscaled(sc, n, bias, heads.causal, r0, inv);
                    for (i, (e, &inv)) in sc.chunks_exact(n).zip(inv.iter()).enumerate() {
                        // SAFETY: as above.
                        unsafe { row_pairs(e, inv, s.p[i * gn..(i + 1) * gn].as_mut_ptr()) };
                    }
                    // O = P·V into this head's columns of the output.
                    // SAFETY: as above.
                    unsafe {
                        let o = out_p.add((bi * m + r0) * hid + col);
                        gemm(rows, &s.p, gn, &s.v, &vp, o, hid, 1.0)
                    };
                }
            });
        // SAFETY: the tasks wrote every head's columns of every row.
        Ok(unsafe { assume_init(out) })
    }

    /// Fetches the cache lines of `x` into L2.
    #[inline(always)]
    fn prefetch(x: &[f32]) {
        for i in (0..x.len()).step_by(16) {
            // SAFETY: a prefetch of an address within x.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(x.as_ptr().add(i).cast()) };
        }
        if let Some(last) = x.last() {
            // SAFETY: as above (the line of the last element, when x spans one more).
            unsafe { _mm_prefetch::<_MM_HINT_T1>((last as *const f32).cast()) };
        }
    }

    /// The first `n` of 16 lanes (all of them for n ≥ 16).
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// `src` · `scale` (in f32) rounded to bf16 (to nearest even, as `avx512::to_bf16`), as
    /// ⌈len/2⌉ pairs at `dst`, the half past an odd length 0.
    ///
    /// # Safety
    /// The CPU has avx512f and avx512bf16; dst is valid for writes of ⌈len/2⌉ lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn row_pairs(src: &[f32], scale: f32, dst: *mut u32) {
        let (len, s) = (src.len(), src.as_ptr());
        let scale = _mm512_set1_ps(scale);
        for i in (0..len).step_by(32) {
            let rem = len - i;
            // SAFETY: the masks load elements below len and store lanes below ⌈len/2⌉ only.
            unsafe {
                let lo = _mm512_maskz_loadu_ps(first(rem), s.wrapping_add(i));
                let hi_s = s.wrapping_add(i + 16);
                let hi = _mm512_maskz_loadu_ps(first(rem.saturating_sub(16)), hi_s);
                let (lo, hi) = (_mm512_mul_ps(lo, scale), _mm512_mul_ps(hi, scale));
                let x: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                // A masked store only for the tail: a load of what a masked store wrote waits
                // for the store to retire (no forwarding), and the tiles read this at once.
                if rem >= 32 {
                    _mm512_storeu_si512(dst.add(i / 2).cast(), x);
                } else {
                    _mm512_mask_storeu_epi32(dst.add(i / 2).cast(), first(rem.div_ceil(2)), x);
                }
            }
        }
    }

    /// Kᵀ's panels from K's rows as bf16 pairs (`k`, `ld` lanes apart, `kt.groups` each):
    /// each 16 keys' lanes of a group gathered (0 past the last key).
    ///
    /// # Safety
    /// The CPU has avx512f; `k` holds (kt.cols − 1)·ld + kt.groups lanes, below 2³¹; `dst`
    /// holds `kt.len()`.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_kt(k: &[u32], ld: usize, kt: &Panels, dst: &mut [u32]) {
        let (n, groups) = (kt.cols, kt.groups);
        debug_assert!(k.len() >= (n - 1) * ld + groups && dst.len() >= kt.len());
        let lanes = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(ld as i32),
        );
        for j0 in (0..n).step_by(16) {
            let keys = first(n - j0);
            for g in 0..groups {
                let idx = _mm512_add_epi32(lanes, _mm512_set1_epi32((j0 * ld + g) as i32));
                // SAFETY: the unmasked lanes read k[(j0 + c)·ld + g] for j0 + c < n; the
                // store is 16 lanes within the group's row of j0's panel (j0 % 16 == 0).
                unsafe {
                    let x = _mm512_mask_i32gather_epi32::<4>(
                        _mm512_setzero_si512(),
                        keys,
                        idx,
                        k.as_ptr().cast(),
                    );
                    _mm512_storeu_si512(dst.as_mut_ptr().add(kt.at(g, j0)).cast(), x);
                }
            }
        }
    }

    /// V's panels from its rows (`row(j)`, d values each): rows 2g and 2g + 1 (0 past n) of
    /// each 16 columns rounded to bf16 and interleaved into one group's lanes.
    ///
    /// # Safety
    /// The CPU has avx512f, avx512bw and avx512bf16; `dst` holds `vp.len()` lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_v<'a>(row: impl Fn(usize) -> &'a [f32], n: usize, vp: &Panels, dst: &mut [u32]) {
        let d = vp.cols;
        assert!(dst.len() >= vp.len(), "pack V: sizes");
        // bf16 element 2c ← lo's c (element c), 2c + 1 ← hi's c (element 16 + c).
        let order: [u16; 32] = std::array::from_fn(|e| (e / 2 + 16 * (e % 2)) as u16);
        // SAFETY: 32 u16 are one 512-bit load.
        let order = unsafe { _mm512_loadu_si512(order.as_ptr().cast()) };
        for g in 0..vp.groups {
            let (r0, r1) = (row(2 * g), (2 * g + 1 < n).then(|| row(2 * g + 1)));
            assert!(
                r0.len() >= d && r1.is_none_or(|r| r.len() >= d),
                "pack V: rows"
            );
            for c0 in (0..d).step_by(16) {
                let cols = first(d - c0);
                // SAFETY: the masks load columns below d of the rows; the store is 16 lanes
                // within the group's row of c0's panel (c0 % 16 == 0).
                unsafe {
                    let lo = _mm512_maskz_loadu_ps(cols, r0.as_ptr().add(c0));
                    let hi = match r1 {
                        Some(r) => _mm512_maskz_loadu_ps(cols, r.as_ptr().add(c0)),
                        None => _mm512_setzero_ps(),
                    };
                    let x: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    let x = _mm512_permutexvar_epi16(order, x);
                    _mm512_storeu_si512(dst.as_mut_ptr().add(vp.at(g, c0)).cast(), x);
                }
            }
        }
    }

    /// C = scale · A·B for A [m, b.groups] bf16 pairs (rows `lda` lanes apart) and B packed,
    /// into C's m rows (`ldc` apart) × b.cols columns.
    ///
    /// # Safety
    /// The CPU has avx512f and avx512bf16; `a` holds (m − 1)·lda + b.groups lanes, `bp`
    /// b.len(); C is valid for writes of m rows × b.cols at row stride ldc.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        a: &[u32],
        lda: usize,
        bp: &[u32],
        b: &Panels,
        c: *mut f32,
        ldc: usize,
        scale: f32,
    ) {
        let groups = b.groups;
        debug_assert!(m == 0 || a.len() >= (m - 1) * lda + groups);
        debug_assert!(bp.len() >= b.len());
        for p in 0..b.count() {
            let nv = b.vectors(p);
            // Rows per tile: as many as the registers hold (rows·nv accumulators + nv + 1).
            let rt = if nv == 4 { 6 } else { 8 };
            for r0 in (0..m).step_by(rt) {
                let t = Tile {
                    a: a[r0 * lda..].as_ptr(),
                    lda,
                    groups,
                    b: bp[p * groups * W..].as_ptr(),
                    c: c.wrapping_add(r0 * ldc + p * W),
                    ldc,
                    cols: b.cols - p * W,
                    scale,
                };
                // SAFETY: as the caller guarantees, for rows [r0, r0 + rows) and this panel.
                unsafe { tile(rt.min(m - r0), nv, &t) };
            }
        }
    }

    /// One tile: `R` rows of A from `a` (`lda` lanes apart, `groups` each) times one panel of
    /// `NV` vectors.
    struct Tile {
        a: *const u32,
        lda: usize,
        groups: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        /// Columns from the panel's first that C has (the first min(cols, 16·NV) are written).
        cols: usize,
        scale: f32,
    }

    /// # Safety
    /// The CPU has avx512f and avx512bf16; `a` holds R rows of `groups` lanes (`lda` apart),
    /// `b` groups × 16·NV lanes, C R rows of min(cols, 16·NV) elements at stride ldc.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_rn<const R: usize, const NV: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let mut b = t.b as *const __m512i;
        for g in 0..t.groups {
            // SAFETY (all unsafe blocks): in bounds as the caller guarantees.
            let bv: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(v)))
            });
            b = unsafe { b.add(NV) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let lane = unsafe { *t.a.add(r * t.lda + g) };
                let av: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(lane as i32)) };
                for v in 0..NV {
                    acc[v] = _mm512_dpbf16_ps(acc[v], av, bv[v]);
                }
            }
        }
        let scale = _mm512_set1_ps(t.scale);
        for (r, acc) in acc.iter().enumerate() {
            for (v, &y) in acc.iter().enumerate() {
                let valid = t.cols.saturating_sub(16 * v).min(16);
                if valid == 0 {
                    break;
                }
                let y = _mm512_mul_ps(y, scale);
                let c = unsafe { t.c.add(r * t.ldc + 16 * v) };
                // Unmasked where whole (the softmax reads S at once: see `row_pairs`).
                if valid == 16 {
                    unsafe { _mm512_storeu_ps(c, y) };
                } else {
                    unsafe { _mm512_mask_storeu_ps(c, first(valid), y) };
                }
            }
        }
    }

    /// [`tile_rn`] for `rows` in 1..=8 and `nv` in 1..=4.
    ///
    /// # Safety
    /// As [`tile_rn`].
    unsafe fn tile(rows: usize, nv: usize, t: &Tile) {
        macro_rules! by_nv {
            ($r:literal) => {
                match nv {
                    1 => tile_rn::<$r, 1>(t),
                    2 => tile_rn::<$r, 2>(t),
                    3 => tile_rn::<$r, 3>(t),
                    4 => tile_rn::<$r, 4>(t),
                    _ => unreachable!("a panel has 1 to 4 vectors"),
                }
            };
        }
        // SAFETY: as the caller guarantees.
        unsafe {
            match rows {
                1 => by_nv!(1),
                2 => by_nv!(2),
                3 => by_nv!(3),
                4 => by_nv!(4),
                5 => by_nv!(5),
                6 => by_nv!(6),
                7 => by_nv!(7),
                8 => by_nv!(8),
                _ => unreachable!("tile rows must be 1..=8"),
            }
        }
    }
}
