//! The bf16 attention (`attention_bf16`) against the f32 `Heads::forward` at the production
//! shapes (MiniLM's 12 heads of 32, BERT-base's and GPT-2's of 64, 128 tokens) and odd ones
//! (77 keys, [CLS] alone as query, causal, a head size that is not even, GPT-2's strided QKV),
//! with padded keys; and that it runs exactly where the CPU has AVX512-BF16, visibly not
//! elsewhere.

use candle_core::Layout;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::attention::{inputs, Heads};
use super::attention_bf16;
use crate::ops::MASKED;

/// A bf16 attention's output against f32's, max |error| / max |output|. bf16 keeps 8
/// significant bits (a rounding errs by up to 2⁻⁸ = 3.9e-3 relative): V rounded moves the
/// output by up to that, Q and K rounded move the scores by up to 2⁻⁷·scale·Σ|q·k| (and P
/// with them), P rounded moves it by up to 2⁻⁸ of each term. Measured at these shapes: 2.4e-3
/// ([CLS] alone over 77 keys) to 5.5e-3 (128 keys), 6.4e-3 causal (its first rows average two
/// or three keys, so no rounding averages out); 1e-2 is 1.6× the largest.
const TOL: f64 = 1e-2;

struct Case {
    b: usize,
    heads: usize,
    d: usize,
    /// Keys, and queries (the first m positions).
    n: usize,
    m: usize,
    causal: bool,
    /// Q, K, V as slices of one [b, n, 3·hidden] buffer (GPT-2's fused c_attn).
    fused: bool,
}

const CASES: [Case; 8] = [
    // MiniLM (all-MiniLM-L6-v2) and BERT-base / GPT-2 at 128 tokens.
    case(2, 12, 32, 128, 128, false, false),
    case(2, 12, 64, 128, 128, false, false),
    case(2, 12, 64, 128, 128, true, true),
    // Odd key counts, [CLS] alone (BERT's last layer), causal with a remainder.
    case(2, 12, 32, 77, 77, false, false),
    case(2, 12, 32, 77, 1, false, false),
    case(2, 12, 64, 128, 1, false, false),
    case(2, 12, 64, 77, 77, true, true),
    // An odd head size (pairs padded), more than 4 vectors of columns, one key.
    case(3, 3, 71, 9, 9, true, false),
];

const fn case(
    b: usize,
    heads: usize,
    d: usize,
    n: usize,
    m: usize,
    causal: bool,
    fused: bool,
) -> Case {
    Case {
        b,
        heads,
        d,
        n,
        m,
        causal,
        fused,
    }
}

fn random(n: usize, amplitude: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(-amplitude..amplitude))
        .collect()
}

/// The key bias: batch row i has its last i·n/4 keys masked (never all of them).
fn mask(b: usize, n: usize) -> Vec<f32> {
    (0..b * n)
        .map(|t| {
            let (i, j) = (t / n, t % n);
            if j >= n - (i * n / 4).min(n - 1) {
                MASKED
            } else {
                0.0
            }
        })
        .collect()
}

impl Case {
    fn what(&self) -> String {
        let Case {
            b,
            heads,
            d,
            n,
            m,
            causal,
            fused,
        } = self;
        format!("b {b} heads {heads} d {d} n {n} m {m} causal {causal} fused {fused}")
    }

    /// Q, K, V data and layouts; V's elements (and Q's, K's) are uniform, |q|, |k| < 2 so that
    /// the scores spread over a few units, as a trained model's do.
    fn inputs(&self, seed: u64) -> (Vec<Vec<f32>>, Vec<Layout>) {
        let hid = self.heads * self.d;
        let (b, n, m) = (self.b, self.n, self.m);
        if self.fused {
            let mut x = random(b * n * 3 * hid, 2.0, seed);
            // V within ±1.
            for (i, v) in x.iter_mut().enumerate() {
                if i % (3 * hid) >= 2 * hid {
                    *v /= 2.0;
                }
            }
            let full = Layout::contiguous((b, n, 3 * hid));
            let l = |part: usize, len: usize| {
                full.narrow(2, part * hid, hid)
                    .unwrap()
                    .narrow(1, 0, len)
                    .unwrap()
            };
            (
                vec![x.clone(), x.clone(), x],
                vec![l(0, m), l(1, n), l(2, n)],
            )
        } else {
            let lay = |len: usize| Layout::contiguous((b, len, hid));
            (
                vec![
                    random(b * n * hid, 2.0, seed),
                    random(b * n * hid, 2.0, seed + 1),
                    random(b * n * hid, 1.0, seed + 2),
                ],
                // The queries: the first m rows of each batch's n.
                vec![
                    Layout::contiguous((b, n, hid)).narrow(1, 0, m).unwrap(),
                    lay(n),
                    lay(n),
                ],
            )
        }
    }

    fn heads<'a>(&self, mask: &'a [f32], bf16_products: bool) -> Heads<'a> {
        Heads {
            heads: self.heads,
            scale: 1.0 / (self.d as f32).sqrt(),
            causal: self.causal,
            mask,
            dropout: None,
            bf16_products,
        }
    }

    /// f32's output and the bf16 kernel's (None where it does not run here).
    fn run(&self, seed: u64) -> (Vec<f32>, Option<Vec<f32>>) {
        let (data, layouts) = self.inputs(seed);
        self.run_on(&data, &layouts)
    }

    fn run_on(&self, data: &[Vec<f32>], layouts: &[Layout]) -> (Vec<f32>, Option<Vec<f32>>) {
        let bias = mask(self.b, self.n);
        let (qkv, dims) = inputs([
            (&data[0][..], &layouts[0]),
            (&data[1][..], &layouts[1]),
            (&data[2][..], &layouts[2]),
        ])
        .unwrap();
        let (want, _) = self.heads(&bias, false).forward(qkv, dims, false).unwrap();
        let got = attention_bf16::forward(&self.heads(&bias, true), qkv, dims).unwrap();
        if let Some(got) = &got {
            // Through `Heads::forward`'s dispatch: the same; keeping the probabilities (a
            // backward pass follows) runs f32, bit for bit.
            let dispatched = self.heads(&bias, true).forward(qkv, dims, false).unwrap();
            assert_eq!(&dispatched.0, got, "{}: dispatch", self.what());
            let saved = self.heads(&bias, true).forward(qkv, dims, true).unwrap();
            assert_eq!(saved.0, want, "{}: with save, f32", self.what());
        }
        (want, got)
    }
}

/// bf16 bits → f64: the value a bf16 operand has.
fn r(x: f32) -> f64 {
    super::packed::bf16_value(super::simd::bf16_bits(x)) as f64
}

/// In f64 from Q, K and V rounded to bf16 (and P not rounded): the output, and per element
/// Σⱼ Pⱼ·|Vⱼ|, which bounds what rounding P to bf16 changes (2⁻⁸ of it).
fn rounded_reference(c: &Case, data: &[Vec<f32>], layouts: &[Layout]) -> (Vec<f64>, Vec<f64>) {
    let (hid, d) = (c.heads * c.d, c.d);
    let bias = mask(c.b, c.n);
    let scale = (1.0 / (d as f32).sqrt()) as f64;
    let at = |t: usize, bi: usize, i: usize, col: usize| {
        let l = &layouts[t];
        r(data[t][l.start_offset() + bi * l.stride()[0] + i * l.stride()[1] + col])
    };
    let (mut out, mut mag) = (vec![0f64; c.b * c.m * hid], vec![0f64; c.b * c.m * hid]);
    for bi in 0..c.b {
        for hi in 0..c.heads {
            for i in 0..c.m {
                let keys = if c.causal { i + 1 } else { c.n };
                let s: Vec<f64> = (0..keys)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|x| at(0, bi, i, hi * d + x) * at(1, bi, j, hi * d + x))
                            .sum();
                        scale * dot + bias[bi * c.n + j] as f64
                    })
                    .collect();
                let max = s.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for x in 0..d {
                    let o = (bi * c.m + i) * hid + hi * d + x;
                    for (j, e) in e.iter().enumerate() {
                        let v = at(2, bi, j, hi * d + x);
                        out[o] += e / sum * v;
                        mag[o] += e / sum * v.abs();
                    }
                }
            }
        }
    }
    (out, mag)
}

/// The kernel computes exactly what its roundings say: against f64 on the rounded Q, K, V,
/// only P's rounding (at most 2⁻⁸ = 3.9e-3 of Σⱼ Pⱼ·|Vⱼ|; measured 1.1e-3 to 3.6e-3 of it,
/// the most in causal rows of few keys) and f32's sums (1e-5 of it, and 1e-6) remain. A key
/// left out, a mis-paired lane or a wrong scale fails this by far.
#[test]
fn bf16_attention_is_exact_on_the_rounded_operands_up_to_ps_rounding() {
    for (s, c) in CASES.iter().enumerate() {
        let (data, layouts) = c.inputs(10 * s as u64 + 5);
        let (_, got) = c.run_on(&data, &layouts);
        let Some(got) = got else {
            skip("bf16 attention against f64 on rounded operands");
            return;
        };
        let (want, mag) = rounded_reference(c, &data, &layouts);
        let bound: Vec<f64> = mag
            .iter()
            .map(|m| m * (1.0 / 256.0 + 1e-5) + 1e-6)
            .collect();
        let worst = got
            .iter()
            .zip(&want)
            .zip(&mag)
            .map(|((g, w), m)| (*g as f64 - w).abs() / m)
            .fold(0f64, f64::max);
        // Visible with --nocapture: the measurement behind the bound.
        println!("{}: |error| ≤ {worst:.2e} of Σ P·|V|", c.what());
        test_support::compare::assert_within(&got, &want, &bound, &c.what());
    }
}

fn skip(what: &str) {
    let why = "this CPU lacks AVX512-BF16 (or IMDB_LORA_CPU_ISA=portable): not run, f32 instead";
    println!("SKIPPED: {what}: {why}");
    test_support::report_platform_skip(what, why);
}

#[test]
fn bf16_attention_is_f32_attention_within_bf16_rounding() {
    for (s, c) in CASES.iter().enumerate() {
        let (want, got) = c.run(10 * s as u64);
        let Some(got) = got else {
            skip("bf16 attention against f32");
            return;
        };
        let what = c.what();
        let d = test_support::compare::assert_close_relative(&got, &want, TOL, &what);
        // Visible with --nocapture: the measured errors behind TOL.
        println!("{what}: relative error {:.2e} ({d})", d.relative());
        // Not f32 itself: the products were rounded.
        assert!(d.max_abs > 0.0, "{what}: no bf16 rounding seen");
    }
}

/// Masked keys get no weight, causal rows none from later keys: values there that are huge
/// change nothing.
#[test]
fn bf16_attention_ignores_masked_and_future_keys() {
    let c = case(2, 2, 16, 21, 21, true, false);
    let (mut data, layouts) = c.inputs(3);
    let bias = mask(c.b, c.n);
    let run = |data: &[Vec<f32>]| {
        let (qkv, dims) = inputs([
            (&data[0][..], &layouts[0]),
            (&data[1][..], &layouts[1]),
            (&data[2][..], &layouts[2]),
        ])
        .unwrap();
        attention_bf16::forward(&c.heads(&bias, true), qkv, dims).unwrap()
    };
    let Some(before) = run(&data) else {
        skip("bf16 attention with masked keys");
        return;
    };
    // Batch 1's masked keys (its last 5) get V = 1e4; the last key of batch 0 too, which only
    // the last query (causal) sees.
    let hid = c.heads * c.d;
    for j in c.n - 5..c.n {
        data[2][(c.n + j) * hid..(c.n + j + 1) * hid].fill(1e4);
    }
    data[2][(c.n - 1) * hid..c.n * hid].fill(1e4);
    let after = run(&data).unwrap();
    for (i, (a, b)) in after.chunks(hid).zip(before.chunks(hid)).enumerate() {
        if i == c.n - 1 {
            assert!(a.iter().zip(b).all(|(a, b)| a != b), "row {i} sees its key");
        } else {
            assert_eq!(a, b, "row {i}");
        }
    }
}

/// Runs exactly where the CPU has AVX512-BF16 and the portable path is not forced; says so
/// where it does not; and `IMDB_LORA_CPU_ISA=portable` switches it off (a child process, the
/// variable being read once).
#[test]
fn bf16_attention_runs_where_the_cpu_has_avx512bf16() {
    let forced = std::env::var(super::ISA_ENV).as_deref() == Ok("portable");
    #[cfg(target_arch = "x86_64")]
    let native = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let native = false;
    let (_, got) = case(1, 2, 8, 3, 3, false, false).run(1);
    assert_eq!(
        got.is_some(),
        native && !forced,
        "native {native}, forced {forced}"
    );
    if got.is_none() {
        skip("bf16 attention");
    }
    if native && !forced {
        let test = "cpu::attention_bf16_tests::bf16_attention_runs_where_the_cpu_has_avx512bf16";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--test-threads", "1", "--nocapture"])
            .env(super::ISA_ENV, "portable")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed") && stdout.contains("SKIPPED"),
            "with {}=portable:\n{stdout}\n{}",
            super::ISA_ENV,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
