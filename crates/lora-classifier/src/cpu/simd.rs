//! Elementwise and row kernels, compiled for AVX-512, AVX2+FMA and the baseline and picked at
//! run time (no `-C target-cpu` needed), plus the branch-free math they use.
//!
//! The loops index slices instead of chaining iterator adaptors: an adaptor that LLVM leaves
//! out of line is compiled without the wide instruction sets (and calls `floorf` per element).
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::matrix::assume_init_mut;
use crate::dropout_mask::DropKey;

#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw");
        u8::from(avx2) + u8::from(avx2 && avx512)
    })
}

/// Defines `fn name(args) body` as a dispatcher over three compilations of the body.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($a:ident : $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub(super) fn $name($($a: $t),*) {
            #[inline(always)]
            fn imp($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn v4($($a: $t),*) { imp($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) { imp($($a),*) }
                match simd_level() {
                    // SAFETY: the CPU has these features (checked at run time).
                    2 => return unsafe { v4($($a),*) },
                    1 => return unsafe { v3($($a),*) },
                    _ => {}
                }
            }
            imp($($a),*)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Math.

/// Cephes' expf (≈1 ulp); exactly 0 below -87 so that masked attention scores vanish.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    // 2ⁿ from the bits of n + 1.5·2²³ (the integer n sits in the low mantissa bits): `as i32`
    // would saturate and check for NaN per element, which LLVM does not vectorise.
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4b40_0000);
    let y = (p * r * r + r + 1.0) * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// erf(x) = sign(x)·(1 − P(t)·e) with t = 1/(1 + p|x|) and e = exp(−x²): Abramowitz & Stegun
/// 7.1.26, absolute error < 1.5e-7 (far below the 1e-4 we check against PyTorch).
#[inline(always)]
fn erf_parts(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let e = exp(-a * a);
    ((1.0 - p * e).copysign(x), e)
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// x·Φ(x), HF's "gelu".
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_parts(x * std::f32::consts::FRAC_1_SQRT_2).0)
}

/// Φ(x) + x·φ(x); erf's exp(−x²/2) is the density's too.
#[inline(always)]
fn gelu_erf_grad(x: f32) -> f32 {
    let (erf, e) = erf_parts(x * std::f32::consts::FRAC_1_SQRT_2);
    0.5 * (1.0 + erf) + x * INV_SQRT_2PI * e
}

/// HF's "gelu_new" (tanh approximation).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

#[inline(always)]
fn gelu_tanh_grad(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
}

/// Reductions over 16 independent lanes: strict IEEE order keeps LLVM from vectorising a
/// plain running sum, but it vectorises these.
macro_rules! lanes {
    ($n:expr, $init:expr, |$acc:ident, $i:ident| $step:expr, $fold:expr) => {{
        let n = $n;
        let mut lanes = [$init; 16];
        let full = n / 16 * 16;
        for c in (0..full).step_by(16) {
            for l in 0..16 {
                let ($acc, $i) = (&mut lanes[l], c + l);
                *$acc = $step;
            }
        }
        let mut total = $init;
        for l in lanes {
            total = $fold(total, l);
        }
        for $i in full..n {
            let $acc = &mut total;
            *$acc = $step;
        }
        total
    }};
}

#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    lanes!(v.len(), 0f32, |acc, i| *acc + v[i], |a, b| a + b)
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    lanes!(a.len(), 0f32, |acc, i| *acc + a[i] * b[i], |x, y| x + y)
}

/// `a.max(b)` without NaN handling, one instruction (NaN scores would poison the row anyway).
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn max(v: &[f32]) -> f32 {
    lanes!(v.len(), f32::NEG_INFINITY, |acc, i| fmax(*acc, v[i]), fmax)
}

// ---------------------------------------------------------------------------------------------
// Kernels.

simd_fn!(
    fn gelu_erf_inplace(v: &mut [f32]) {
        for i in 0..v.len() {
            v[i] = gelu_erf(v[i]);
        }
    }
);
simd_fn!(
    fn gelu_tanh_inplace(v: &mut [f32]) {
        for i in 0..v.len() {
            v[i] = gelu_tanh(v[i]);
        }
    }
);
simd_fn!(
    fn gelu_erf_map(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        let x = &x[..y.len()];
        for i in 0..y.len() {
            y[i] = MaybeUninit::new(gelu_erf(x[i]));
        }
    }
);
simd_fn!(
    fn gelu_tanh_map(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        let x = &x[..y.len()];
        for i in 0..y.len() {
            y[i] = MaybeUninit::new(gelu_tanh(x[i]));
        }
    }
);
simd_fn!(
    /// dx = g · gelu'(x)
    fn gelu_erf_backward(x: &[f32], g: &[f32], dx: &mut [MaybeUninit<f32>]) {
        let (x, g) = (&x[..dx.len()], &g[..dx.len()]);
        for i in 0..dx.len() {
            dx[i] = MaybeUninit::new(g[i] * gelu_erf_grad(x[i]));
        }
    }
);
simd_fn!(
    fn gelu_tanh_backward(x: &[f32], g: &[f32], dx: &mut [MaybeUninit<f32>]) {
        let (x, g) = (&x[..dx.len()], &g[..dx.len()]);
        for i in 0..dx.len() {
            dx[i] = MaybeUninit::new(g[i] * gelu_tanh_grad(x[i]));
        }
    }
);
/// dst[i] = src[i] · mask(first + i): the mask is a function of the element index.
pub(super) fn dropout_into(src: &[f32], dst: &mut [MaybeUninit<f32>], first: usize, key: DropKey) {
    key.runs(first, dst.len(), |r, at| {
        dropout_into_run(&src[r.clone()], &mut dst[r], at, key)
    });
}

pub(super) fn dropout_factors(dst: &mut [MaybeUninit<f32>], first: usize, key: DropKey) {
    key.runs(first, dst.len(), |r, at| {
        dropout_factors_run(&mut dst[r], at, key)
    });
}

/// dst = dropout(x) + r
pub(super) fn dropout_add_into(
    x: &[f32],
    r: &[f32],
    dst: &mut [MaybeUninit<f32>],
    first: usize,
    key: DropKey,
) {
    key.runs(first, dst.len(), |s, at| {
        dropout_add_into_run(&x[s.clone()], &r[s.clone()], &mut dst[s], at, key)
    });
}

/// dst += dropout(src)
pub(super) fn add_dropped(dst: &mut [f32], src: &[f32], first: usize, key: DropKey) {
    key.runs(first, dst.len(), |r, at| {
        add_dropped_run(&mut dst[r.clone()], &src[r], at, key)
    });
}

// The loops above over runs of consecutive mask indices (the key's factor at first + i).
simd_fn!(
    fn dropout_into_run(src: &[f32], dst: &mut [MaybeUninit<f32>], first: usize, key: DropKey) {
        let src = &src[..dst.len()];
        for i in 0..dst.len() {
            dst[i] = MaybeUninit::new(src[i] * key.factor((first + i) as u32));
        }
    }
);
simd_fn!(
    fn dropout_factors_run(dst: &mut [MaybeUninit<f32>], first: usize, key: DropKey) {
        for i in 0..dst.len() {
            dst[i] = MaybeUninit::new(key.factor((first + i) as u32));
        }
    }
);
simd_fn!(
    fn dropout_add_into_run(
        x: &[f32],
        r: &[f32],
        dst: &mut [MaybeUninit<f32>],
        first: usize,
        key: DropKey,
    ) {
        let (x, r) = (&x[..dst.len()], &r[..dst.len()]);
        for i in 0..dst.len() {
            dst[i] = MaybeUninit::new(x[i] * key.factor((first + i) as u32) + r[i]);
        }
    }
);
simd_fn!(
    fn add_dropped_run(dst: &mut [f32], src: &[f32], first: usize, key: DropKey) {
        let src = &src[..dst.len()];
        for i in 0..dst.len() {
            dst[i] += src[i] * key.factor((first + i) as u32);
        }
    }
);
simd_fn!(
    fn add_into(x: &[f32], r: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let (x, r) = (&x[..dst.len()], &r[..dst.len()]);
        for i in 0..dst.len() {
            dst[i] = MaybeUninit::new(x[i] + r[i]);
        }
    }
);
simd_fn!(
    fn add_inplace(dst: &mut [f32], src: &[f32]) {
        let src = &src[..dst.len()];
        for i in 0..dst.len() {
            dst[i] += src[i];
        }
    }
);
simd_fn!(
    /// Row-wise softmax of an n × n score block plus the key bias; with `causal`, row i keeps
    /// keys 0..=i and the others become 0.
    fn softmax_rows(p: &mut [f32], n: usize, bias: &[f32], causal: bool) {
        let bias = &bias[..n];
        for (i, row) in p.chunks_exact_mut(n).enumerate() {
            let (live, dead) = row.split_at_mut(if causal { i + 1 } else { n });
            for j in 0..live.len() {
                live[j] += bias[j];
            }
            let m = max(live);
            for j in 0..live.len() {
                live[j] = exp(live[j] - m);
            }
            let inv = 1.0 / sum(live);
            for j in 0..live.len() {
                live[j] *= inv;
            }
            dead.fill(0.0);
        }
    }
);
simd_fn!(
    /// The scores' gradient for one query row, times the score scale, in place of dP_d:
    /// dS = scale · (P_d ⊙ dP_d − P · Σ(P_d ⊙ dP_d)), P_d being the dropped-out probabilities.
    fn softmax_backward_row(ds: &mut [f32], p: &[f32], pd: &[f32], scale: f32) {
        let (p, pd) = (&p[..ds.len()], &pd[..ds.len()]);
        let d = dot(ds, pd);
        for i in 0..ds.len() {
            ds[i] = scale * (pd[i] * ds[i] - p[i] * d);
        }
    }
);
simd_fn!(
    fn layer_norm_row(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let n = x.len();
        let (w, b) = (&w[..n], &b[..n]);
        let mean = sum(x) / n as f32;
        for i in 0..n {
            x[i] -= mean;
        }
        let rstd = 1.0 / (dot(x, x) / n as f32 + eps).sqrt();
        for i in 0..n {
            x[i] = x[i] * rstd * w[i] + b[i];
        }
    }
);

simd_fn!(
    /// x: one LayerNorm input row, g = dy. Writes all of dx (the weight is frozen: no dw;
    /// the bias gradient is the column sum of dy, taken by the caller when it trains). `xhat`
    /// is scratch of x's length.
    fn layer_norm_backward_row(
        x: &[f32],
        g: &[f32],
        dx: &mut [MaybeUninit<f32>],
        w: &[f32],
        eps: f32,
        xhat: &mut [f32],
    ) {
        let n = x.len();
        let (g, dx, w, xhat) = (&g[..n], &mut dx[..n], &w[..n], &mut xhat[..n]);
        let mean = sum(x) / n as f32;
        for i in 0..n {
            xhat[i] = x[i] - mean;
        }
        let rstd = 1.0 / (dot(xhat, xhat) / n as f32 + eps).sqrt();
        for i in 0..n {
            xhat[i] *= rstd;
            dx[i] = MaybeUninit::new(g[i] * w[i]);
        }
        // SAFETY: the loop above wrote all of dx.
        let dx = unsafe { assume_init_mut(dx) };
        let mean_g = sum(dx) / n as f32;
        let mean_gx = dot(dx, xhat) / n as f32;
        for i in 0..n {
            dx[i] = rstd * (dx[i] - mean_g - xhat[i] * mean_gx);
        }
    }
);

simd_fn!(
    /// f32 → bf16 bits, rounded to nearest even.
    fn bf16_row_portable(src: &[f32], dst: &mut [u16]) {
        let dst = &mut dst[..src.len()];
        for i in 0..src.len() {
            dst[i] = bf16_bits(src[i]);
        }
    }
);

/// One row's int8 quantization: dst[i] = round(src[i] / s) + 128 with s = max|src| / 127
/// (0 for a zero row); returns s, NaN when the row holds NaN or infinity. `max_abs_bits` and
/// `quantize` are this module's loops or their AVX-512 versions (the same results).
pub(super) fn quantize_row(
    src: &[f32],
    dst: &mut [u8],
    max_abs_bits: impl Fn(&[f32]) -> u32,
    quantize: impl Fn(&[f32], &mut [u8], f32),
) -> f32 {
    // |x|'s bits order as |x| does; infinity and NaN lie above every finite value.
    let bits = max_abs_bits(src);
    let max_abs = f32::from_bits(bits);
    if bits >= 0x7f80_0000 || max_abs == 0.0 {
        dst[..src.len()].fill(128);
        return if max_abs == 0.0 { 0.0 } else { f32::NAN };
    }
    quantize(src, dst, 127.0 / max_abs);
    max_abs / 127.0
}

simd_fn!(
    fn max_abs_bits_into(v: &[f32], out: &mut u32) {
        let mut m = 0u32;
        for x in v {
            m = m.max(x.to_bits() & 0x7fff_ffff);
        }
        *out = m;
    }
);

pub(super) fn max_abs_bits(v: &[f32]) -> u32 {
    let mut m = 0;
    max_abs_bits_into(v, &mut m);
    m
}

simd_fn!(
    /// dst[i] = round_ties_even(src[i] · inv) + 128, for |src[i] · inv| ≤ 127.
    fn quantize_into(src: &[f32], dst: &mut [u8], inv: f32) {
        let dst = &mut dst[..src.len()];
        for i in 0..src.len() {
            // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits (see `exp`).
            let bits = (src[i] * inv + 12_582_912.0).to_bits();
            dst[i] = bits.wrapping_sub(0x4b40_0000).wrapping_add(128) as u8;
        }
    }
);

/// f32 → bf16 bits, rounded to nearest even (as `vcvtne2ps2bf16`); NaN stays NaN.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}
