//! The low-precision GEMMs against answers computed here independently, in f64 from the
//! rounded or quantized operands, on shapes that are not multiples of the tiles (the
//! microkernels' 8 × 48, the AMX blocks' 16 rows and 16 groups of k, the pairs and quads of k),
//! a single row, and with the AVX-512 kernels, the AMX tiles (where the CPU has them, and on
//! every CPU through the scalar model of the tile instructions) and the portable fallback (what a
//! CPU without the features runs).

use std::mem::MaybeUninit;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::packed::{bf16_value, round_ties_even_small, Isa, PackedLinear, Precision};
use super::simd::bf16_bits;

/// (m, k = in, n = out): one row, k and n below, at and past the tile sizes, odd everywhere.
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 7, 5),
    (3, 2, 48),
    (8, 4, 49),
    (9, 33, 47),
    (17, 64, 96),
    (65, 130, 97),
    (70, 385, 145),
    (128, 384, 1536),
    // BERT-base's MLP: k 3072 forward, 768 in the input gradient; a few rows (the f64
    // reference and the tile model are slow).
    (5, 3072, 768),
];

/// The portable code, the AMX blocking on the scalar model of the tile instructions, and
/// whichever of the AVX-512 microkernels and the AMX tiles this CPU runs.
fn isas(p: Precision) -> Vec<Isa> {
    let mut v = vec![Isa::Portable, Isa::AmxModel];
    let avx512 = match p {
        Precision::Bf16 => is_x86_feature_detected!("avx512bf16"),
        Precision::Int8 => is_x86_feature_detected!("avx512vnni"),
    };
    if avx512 && std::env::var(super::ISA_ENV).as_deref() != Ok("portable") {
        v.push(Isa::Avx512);
    } else {
        // Visible in the test output (not captured by libtest): this CPU checks only the fallback.
        test_support::report_platform_skip(
            &format!("AVX-512 {p:?} kernels"),
            "this CPU lacks the instructions (or IMDB_LORA_CPU_ISA=portable); not checked",
        );
    }
    // The tiles themselves, wherever they can run (not only when IMDB_LORA_CPU_ISA=amx).
    match super::amx::available(p) {
        Ok(()) => v.push(Isa::Amx),
        Err(why) => test_support::report_platform_skip(
            &format!("AMX {p:?} tiles"),
            &format!("{why}; only their scalar model was checked"),
        ),
    }
    v
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn run(f: impl FnOnce(&mut [MaybeUninit<f32>]), n: usize) -> Vec<f32> {
    let mut y = vec![MaybeUninit::new(f32::NAN); n];
    f(&mut y);
    // SAFETY: initialised above (NaN where a kernel failed to write).
    y.into_iter().map(|v| unsafe { v.assume_init() }).collect()
}

/// W[o][i] from a weight stored [out, in] or (conv1d) [in, out].
fn w_at(w: &[f32], n_out: usize, n_in: usize, conv1d: bool, o: usize, i: usize) -> f32 {
    if conv1d {
        w[i * n_out + o]
    } else {
        w[o * n_in + i]
    }
}

/// |got − want| ≤ tol · Σ|terms| + 1e-30 elementwise, where `mag` holds Σ|terms|.
#[track_caller]
fn assert_close(got: &[f32], want: &[f64], mag: &[f64], tol: f64, what: &str) {
    let bound: Vec<f64> = mag.iter().map(|s| tol * s + 1e-30).collect();
    test_support::compare::assert_within(got, want, &bound, what);
}

fn r(x: f32) -> f64 {
    bf16_value(bf16_bits(x)) as f64
}

#[test]
fn bf16_forward_and_input_gradient_equal_f64_products_of_the_rounded_values() {
    let isas = isas(Precision::Bf16);
    for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
        for conv1d in [false, true] {
            let (x, w, b) = (
                random(m * k, s as u64),
                random(n * k, 100 + s as u64),
                random(n, 7),
            );
            let with_bias = s % 2 == 0;
            let g = random(m * n, 200 + s as u64);
            // The f64 answers, once per shape for every ISA.
            let (mut want_y, mut mag_y) = (vec![0f64; m * n], vec![0f64; m * n]);
            for i in 0..m {
                for o in 0..n {
                    let mut acc = if with_bias { b[o] as f64 } else { 0.0 };
                    let mut s = acc.abs();
                    for q in 0..k {
                        let t = r(x[i * k + q]) * r(w_at(&w, n, k, conv1d, o, q));
                        acc += t;
                        s += t.abs();
                    }
                    (want_y[i * n + o], mag_y[i * n + o]) = (acc, s);
                }
            }
            let (mut want_dx, mut mag_dx) = (vec![0f64; m * k], vec![0f64; m * k]);
            for i in 0..m {
                for q in 0..k {
                    let (mut acc, mut s) = (0f64, 0f64);
                    for o in 0..n {
                        let t = r(g[i * n + o]) * r(w_at(&w, n, k, conv1d, o, q));
                        acc += t;
                        s += t.abs();
                    }
                    (want_dx[i * k + q], mag_dx[i * k + q]) = (acc, s);
                }
            }
            for &isa in &isas {
                let what = format!("{isa:?} m {m} k {k} n {n} conv1d {conv1d}");
                let p = PackedLinear::bf16(&w, n, k, conv1d, isa).unwrap();
                let y = run(|y| p.forward(&x, with_bias.then_some(&b[..]), y), m * n);
                // f32 accumulation of exact products: a few ulps of the magnitude.
                assert_close(&y, &want_y, &mag_y, 1e-5, &format!("forward {what}"));
                let dx = run(|dx| p.input_grad(&g, dx).unwrap(), m * k);
                assert_close(&dx, &want_dx, &mag_dx, 1e-5, &format!("input grad {what}"));
            }
        }
    }
}

/// The scales and integers of symmetric int8 quantization, computed here independently.
fn quantize(v: &[f32]) -> (f64, Vec<i64>) {
    let max = v.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    if max == 0.0 {
        return (0.0, vec![0; v.len()]);
    }
    let s = (max as f32 / 127.0) as f64;
    let inv = 127.0 / max as f32;
    // Rounding x·(127/max) in f32, as the kernels do for activations.
    let q = v
        .iter()
        .map(|&x| (x * inv).round_ties_even() as i64)
        .collect();
    (s, q)
}

#[test]
fn int8_forward_equals_the_integer_product_of_per_row_and_per_channel_quantization() {
    let isas = isas(Precision::Int8);
    for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
        for conv1d in [false, true] {
            let (mut x, w, b) = (
                random(m * k, s as u64),
                random(n * k, 100 + s as u64),
                random(n, 7),
            );
            // A zero row: scale 0, output = bias.
            x[..k].fill(0.0);
            // The f64 answers, once per shape for every ISA.
            let mut want = vec![0f64; m * n];
            let mut exact = vec![0f64; m * n];
            let wq: Vec<(f64, Vec<i64>)> = (0..n)
                .map(|o| {
                    let row: Vec<f32> = (0..k).map(|q| w_at(&w, n, k, conv1d, o, q)).collect();
                    // Weights: q = round(w / s) with s = max/127 (division, not 127/max).
                    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let sw = max / 127.0;
                    (
                        sw as f64,
                        row.iter()
                            .map(|&x| (x / sw).round_ties_even() as i64)
                            .collect(),
                    )
                })
                .collect();
            for i in 0..m {
                let (sa, qa) = quantize(&x[i * k..(i + 1) * k]);
                for o in 0..n {
                    let (sw, qw) = &wq[o];
                    let dot: i64 = qa.iter().zip(qw).map(|(a, b)| a * b).sum();
                    want[i * n + o] = (sa as f32 * *sw as f32) as f64 * dot as f64 + b[o] as f64;
                    exact[i * n + o] = b[o] as f64
                        + (0..k)
                            .map(|q| x[i * k + q] as f64 * w_at(&w, n, k, conv1d, o, q) as f64)
                            .sum::<f64>();
                }
            }
            let mag: Vec<f64> = want.iter().map(|v| v.abs().max(1.0)).collect();
            for &isa in &isas {
                let what = format!("{isa:?} m {m} k {k} n {n} conv1d {conv1d}");
                let p = PackedLinear::int8(&w, n, k, conv1d, isa).unwrap();
                let y = run(|y| p.forward(&x, Some(&b), y), m * n);
                assert_close(&y, &want, &mag, 1e-5, &format!("int8 {what}"));
                // And a useful approximation of the f32 product: within 2% of its scale.
                let d = test_support::compare::diff_of(&y, &exact, &what);
                assert!(
                    d.max_abs <= 0.02 * d.scale.max(1.0),
                    "int8 {what}: error against the f32 product: {d}"
                );
            }
        }
    }
}

#[test]
fn int8_has_no_backward_pass_and_rejects_non_finite_weights() {
    let p = PackedLinear::int8(&[1.0, 2.0], 1, 2, false, Isa::Portable).unwrap();
    let mut dx = vec![MaybeUninit::new(0f32); 2];
    let err = p.input_grad(&[1.0], &mut dx).unwrap_err().to_string();
    assert!(err.contains("no backward pass"), "{err}");
    let err = PackedLinear::int8(&[1.0, f32::NAN], 2, 1, false, Isa::Portable)
        .err()
        .expect("NaN weight")
        .to_string();
    assert!(err.contains("channel 1"), "{err}");
}

#[test]
fn int8_activations_with_nan_or_inf_give_nan_rows() {
    for isa in isas(Precision::Int8) {
        let p = PackedLinear::int8(&random(6, 1), 3, 2, false, isa).unwrap();
        let y = run(|y| p.forward(&[1.0, f32::INFINITY, 0.5, 0.25], None, y), 6);
        assert!(y[..3].iter().all(|v| v.is_nan()), "{isa:?}: {y:?}");
        assert!(y[3..].iter().all(|v| v.is_finite()), "{isa:?}: {y:?}");
    }
}

#[test]
fn rounding_for_int8_equals_round_ties_even() {
    // The ties both ways, their neighbours, the ends of int8's range and beyond it.
    let mut xs: Vec<f32> = (-260..=260).map(|h| h as f32 / 2.0).collect();
    for x in xs.clone() {
        xs.extend([x.next_up(), x.next_down()]);
    }
    xs.extend([0.0, -0.0, 4_194_303.5, -4_194_302.5, 1e-30, -1e-30]);
    xs.extend(random(100_000, 3).iter().map(|v| v * 130.0));
    for x in xs {
        // (−0 and +0 both count as 0: they quantize to the same integer.)
        let (got, want) = (round_ties_even_small(x), x.round_ties_even());
        assert!(got == want, "{x:e}: {got:e}, round_ties_even {want:e}");
    }
}
