//! The microkernels of the low-precision GEMMs (`packed`): one tile of at most [`MR`] rows ×
//! [`NR`] columns of C = A·B over the whole inner dimension, accumulated in registers.
//!
//! - bf16 (AVX512-BF16, `vdpbf16ps`): A's rows as bf16 pairs, B's panels as pairs of
//!   consecutive k per column; f32 accumulation, bias added on the way out.
//! - int8 (AVX512-VNNI, `vpdpbusd`): A's rows as u8 quads (the int8 value + 128), B's panels as
//!   signed quads; i32 accumulation, then the offset, the scales and the bias.
//!
//! Each A group (2 or 4 values of one row) is broadcast as one 32-bit lane and multiplied
//! with three 16-lane vectors of B: [`MR`] × 3 accumulators, 24 of the 32 vector registers.
//! Only `packed` calls these, after checking the CPU's features.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

/// Rows of A per tile.
pub(super) const MR: usize = 8;
/// 16-lane vectors of B per tile.
const NV: usize = 3;
/// Columns of B per panel and tile.
pub(super) const NR: usize = 16 * NV;

/// Where one tile reads and writes. Pointers stay valid for the call (the caller's buffers).
pub(super) struct Tile {
    /// A's first row of the tile, `lda` 32-bit groups per row; `groups` groups are read.
    pub a: *const u32,
    pub lda: usize,
    pub groups: usize,
    /// B's panel: `groups` × NR groups.
    pub b: *const u32,
    /// C's first element of the tile; rows `ldc` apart; the first `cols` of NR are written.
    pub c: *mut f32,
    pub ldc: usize,
    pub cols: usize,
}

/// The per-column epilogue of a panel (NR values each), and per-row scales for int8.
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    /// int8: the weight's per-column scale, and −128·Σₖ B (undoes A's +128 offset).
    pub col_scale: Option<&'a [f32]>,
    pub col_offset: Option<&'a [i32]>,
    /// int8: the A rows' scales.
    pub row_scale: Option<&'a [f32]>,
}

fn mask(cols: usize, v: usize) -> __mmask16 {
    let valid = cols.saturating_sub(16 * v).min(16);
    ((1u32 << valid) - 1) as __mmask16
}

/// bf16 tile of `R` rows.
///
/// # Safety
/// The CPU has avx512f and avx512bf16; the tile's pointers are valid as [`Tile`] says, and the
/// epilogue's slices hold NR values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_tile<const R: usize>(t: &Tile, e: &Epilogue) {
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let mut b = t.b as *const __m512i;
    for p in 0..t.groups {
        // SAFETY (all unsafe blocks): in bounds as the caller guarantees.
        let bv: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(v)))
        });
        b = unsafe { b.add(NV) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = unsafe { *t.a.add(r * t.lda + p) };
            let av: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(a as i32)) };
            for v in 0..NV {
                acc[v] = _mm512_dpbf16_ps(acc[v], av, bv[v]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &y) in acc.iter().enumerate() {
            let m = mask(t.cols, v);
            if m == 0 {
                continue;
            }
            let y = match e.bias {
                Some(bias) => {
                    _mm512_add_ps(y, unsafe { _mm512_loadu_ps(bias.as_ptr().add(16 * v)) })
                }
                None => y,
            };
            unsafe { _mm512_mask_storeu_ps(t.c.add(r * t.ldc + 16 * v), m, y) };
        }
    }
}

/// int8 tile of `R` rows: C = row_scale · col_scale · (A_u8·B_s8 + col_offset) + bias.
///
/// # Safety
/// The CPU has avx512f and avx512vnni; pointers as [`Tile`] says; the epilogue's col_scale and
/// col_offset hold NR values, bias NR if given, row_scale R.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn int8_tile<const R: usize>(t: &Tile, e: &Epilogue) {
    let mut acc = [[_mm512_setzero_si512(); NV]; R];
    let mut b = t.b as *const __m512i;
    for p in 0..t.groups {
        // SAFETY (all unsafe blocks): in bounds as the caller guarantees.
        let bv: [__m512i; NV] = std::array::from_fn(|v| unsafe { _mm512_loadu_si512(b.add(v)) });
        b = unsafe { b.add(NV) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(unsafe { *t.a.add(r * t.lda + p) } as i32);
            for v in 0..NV {
                acc[v] = _mm512_dpbusd_epi32(acc[v], av, bv[v]);
            }
        }
    }
    let (Some(cs), Some(co), Some(rs)) = (e.col_scale, e.col_offset, e.row_scale) else {
        return;
    };
    for (r, acc) in acc.iter().enumerate() {
        let row = _mm512_set1_ps(rs[r]);
        for (v, &y) in acc.iter().enumerate() {
            let m = mask(t.cols, v);
            if m == 0 {
                continue;
            }
            let (scale, offset) = unsafe {
                (
                    _mm512_loadu_ps(cs.as_ptr().add(16 * v)),
                    _mm512_loadu_si512(co.as_ptr().add(16 * v) as *const __m512i),
                )
            };
            let y = _mm512_cvtepi32_ps(_mm512_add_epi32(y, offset));
            let s = _mm512_mul_ps(row, scale);
            let y = match e.bias {
                Some(bias) => {
                    _mm512_fmadd_ps(y, s, unsafe { _mm512_loadu_ps(bias.as_ptr().add(16 * v)) })
                }
                None => _mm512_mul_ps(y, s),
            };
            unsafe { _mm512_mask_storeu_ps(t.c.add(r * t.ldc + 16 * v), m, y) };
        }
    }
}

macro_rules! by_rows {
    ($f:ident, $rows:expr, $t:expr, $e:expr) => {
        match $rows {
            8 => $f::<8>($t, $e),
            7 => $f::<7>($t, $e),
            6 => $f::<6>($t, $e),
            5 => $f::<5>($t, $e),
            4 => $f::<4>($t, $e),
            3 => $f::<3>($t, $e),
            2 => $f::<2>($t, $e),
            1 => $f::<1>($t, $e),
            _ => unreachable!("tile rows must be 1..={MR}"),
        }
    };
}

/// # Safety
/// As [`bf16_tile`], with `rows` in 1..=MR.
pub(super) unsafe fn bf16(rows: usize, t: &Tile, e: &Epilogue) {
    // SAFETY: as the caller guarantees.
    unsafe { by_rows!(bf16_tile, rows, t, e) }
}

/// # Safety
/// As [`int8_tile`], with `rows` in 1..=MR.
pub(super) unsafe fn int8(rows: usize, t: &Tile, e: &Epilogue) {
    // SAFETY: as the caller guarantees.
    unsafe { by_rows!(int8_tile, rows, t, e) }
}

/// f32 → bf16 (round to nearest even, NaN kept) for a whole row, 32 at a time.
///
/// # Safety
/// The CPU has avx512f and avx512bf16; `dst` holds at least `src.len()` elements.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len();
    let full = n / 32 * 32;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for i in (0..full).step_by(32) {
        // SAFETY: i + 32 ≤ n ≤ dst.len().
        unsafe {
            let lo = _mm512_loadu_ps(s.add(i));
            let hi = _mm512_loadu_ps(s.add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.add(i) as *mut __m512i, v);
        }
    }
    for i in full..n {
        dst[i] = super::simd::bf16_bits(src[i]);
    }
}

/// max |x| as bits (above 0x7f7fffff when some x is infinite or NaN), 16 at a time: LLVM
/// turns the plain loop into gathers.
///
/// # Safety
/// The CPU has avx512f.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn max_abs_bits(v: &[f32]) -> u32 {
    let (n, p) = (v.len(), v.as_ptr());
    let full = n / 16 * 16;
    let (mut m, abs) = (_mm512_setzero_si512(), _mm512_set1_epi32(0x7fff_ffff));
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ n.
        let x = unsafe { _mm512_loadu_si512(p.add(i) as *const __m512i) };
        m = _mm512_max_epu32(m, _mm512_and_si512(x, abs));
    }
    let mut bits = _mm512_reduce_max_epu32(m);
    for x in &v[full..] {
        bits = bits.max(x.to_bits() & 0x7fff_ffff);
    }
    bits
}

/// dst[i] = round_ties_even(src[i] · inv) + 128 for |src[i] · inv| ≤ 127, as
/// `simd::quantize_into` computes it (the same operations, so the same bytes).
///
/// # Safety
/// The CPU has avx512f; dst holds at least src.len() bytes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn quantize(src: &[f32], dst: &mut [u8], inv: f32) {
    let (n, s, d) = (src.len(), src.as_ptr(), dst.as_mut_ptr());
    let full = n / 16 * 16;
    let (vinv, magic) = (_mm512_set1_ps(inv), _mm512_set1_ps(12_582_912.0));
    let offset = _mm512_set1_epi32(0x4b40_0000 - 128);
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ n ≤ dst.len().
        unsafe {
            let x = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(s.add(i)), vinv), magic);
            let q = _mm512_sub_epi32(_mm512_castps_si512(x), offset);
            _mm_storeu_si128(d.add(i) as *mut __m128i, _mm512_cvtepi32_epi8(q));
        }
    }
    super::simd::quantize_into(&src[full..], &mut dst[full..n], inv);
}
