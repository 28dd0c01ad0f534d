//! Frozen weights in low precision and the GEMMs on them: bf16 (training and inference) and
//! per-channel int8 (inference), with f32 activations in and out.
//!
//! A layer's weight is packed once, into the panels the AVX-512 microkernels (`avx512`) read
//! (and the AMX tiles, `amx`, with the inner dimension padded to whole tiles); each call
//! converts its activations once (to bf16, or to int8 with one scale per row, as ONNX
//! Runtime's dynamic quantization does per tensor) and runs tiles of C in parallel. On a CPU
//! without the instructions (or with `IMDB_LORA_CPU_ISA=portable`) the same numbers come from
//! the `gemm` crate's f32 GEMM on the rounded values: products of bf16 or small integers are
//! exact in f32, so only the order of the sums differs.

use std::sync::OnceLock;

use candle_core::{bail, Result};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(target_arch = "x86_64")]
use super::avx512::{self, Epilogue, Tile, MR, NR};
use super::matrix::{gemm_acc, gemm_into, uninit_buffer, Mat};
use super::simd::{bf16_bits, bf16_row_portable, max_abs_bits, quantize_into, quantize_row};

/// Environment variable that picks the low-precision GEMMs' code: `portable` forces the
/// portable path (a CPU without the features); `avx512` the AVX-512 microkernels where the CPU
/// has them; `amx` takes the AMX tiles where the CPU and OS allow them (off otherwise until
/// that path has run on an AMX machine, see `amx`).
pub const ISA_ENV: &str = "IMDB_LORA_CPU_ISA";

/// Which code computes a low-precision GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The AMX tiles (AMX-BF16, AMX-INT8) on the AVX-512 panels, padded (`amx`).
    Amx,
    /// The AVX-512 microkernels (AVX512-BF16 for bf16, AVX512-VNNI for int8).
    Avx512,
    /// f32 GEMMs on the rounded values, on any CPU.
    Portable,
    /// The AMX path with the tile instructions computed by `amx::TileModel`: tests only.
    #[cfg(test)]
    AmxModel,
}

impl Isa {
    /// The best this CPU has for `precision` (AMX only when `IMDB_LORA_CPU_ISA=amx` asks),
    /// unless `IMDB_LORA_CPU_ISA=portable`.
    pub fn detect(precision: Precision) -> Isa {
        // avx512: the AVX-512 kernels even where AMX could run (today's default anyway).
        const CHOICES: [&str; 3] = ["portable", "avx512", "amx"];
        static REQUESTED: OnceLock<Option<String>> = OnceLock::new();
        let requested = REQUESTED.get_or_init(|| {
            let value = std::env::var(ISA_ENV).ok().filter(|v| !v.is_empty());
            if let Some(v) = value.as_deref().filter(|v| !CHOICES.contains(v)) {
                eprintln!("warning: {ISA_ENV}={v:?} is not one of {CHOICES:?}; ignored");
            }
            value
        });
        match requested.as_deref() {
            Some("portable") => return Isa::Portable,
            #[cfg(target_arch = "x86_64")]
            Some("amx") => match amx::available(precision) {
                Ok(()) => return Isa::Amx,
                Err(why) => {
                    static SAID: OnceLock<()> = OnceLock::new();
                    SAID.get_or_init(|| {
                        eprintln!(
                            "warning: {ISA_ENV}=amx: {why}; the next kernel down runs instead"
                        )
                    });
                }
            },
            _ => {}
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 =
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            let ok = match precision {
                Precision::Bf16 => avx512 && is_x86_feature_detected!("avx512bf16"),
                Precision::Int8 => avx512 && is_x86_feature_detected!("avx512vnni"),
            };
            if ok {
                return Isa::Avx512;
            }
        }
        let _ = precision;
        Isa::Portable
    }

    /// Whether this code runs the CPU's own vector instructions around its GEMM (conversions,
    /// quantization), not the portable loops.
    pub(crate) fn native(self) -> bool {
        matches!(self, Isa::Amx | Isa::Avx512)
    }

    /// Whether the weights are packed into panels (else kept as f32 values for `gemm`).
    fn panels(self) -> bool {
        self != Isa::Portable
    }

    /// The multiple that the inner dimension's groups are padded to: whole AMX tiles.
    fn whole_groups(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => amx::GROUPS,
            #[cfg(all(test, target_arch = "x86_64"))]
            Isa::AmxModel => amx::GROUPS,
            _ => 1,
        }
    }

    /// Rows of A per tile of C, and the multiple A's rows are padded to.
    #[cfg(target_arch = "x86_64")]
    fn tile_rows(self) -> usize {
        match self {
            Isa::Amx => amx::ROWS,
            #[cfg(test)]
            Isa::AmxModel => amx::ROWS,
            _ => MR,
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn tile_rows(self) -> usize {
        1
    }
}

/// The number format of a packed weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Bf16,
    Int8,
}

/// The value of bf16 bits.
#[inline(always)]
pub(super) fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// B [k, n] in panels of NR columns: for each group of `G` consecutive k, the panel's NR
/// columns' G values side by side, as one 32-bit lane per column. Zero-padded in k and n.
struct Panels {
    data: Vec<u32>,
    groups: usize,
    panels: usize,
}

#[cfg(target_arch = "x86_64")]
const PANEL: usize = NR;
#[cfg(not(target_arch = "x86_64"))]
const PANEL: usize = 48;

impl Panels {
    /// `get(k, n)` as `G` lanes of `bits` bits each (bf16: 2 × 16, int8: 4 × 8), the groups
    /// zero-padded to a multiple of `whole` (the AMX tiles read 16 at a time).
    fn pack(
        k: usize,
        n: usize,
        g: usize,
        whole: usize,
        get: impl Fn(usize, usize) -> u32 + Sync,
    ) -> Self {
        let groups = k.div_ceil(g).next_multiple_of(whole);
        let panels = n.div_ceil(PANEL);
        let bits = 32 / g;
        let mut data = vec![0u32; panels * groups * PANEL];
        data.par_chunks_mut(groups * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                for (q, lanes) in panel.chunks_mut(PANEL).enumerate() {
                    for (c, lane) in lanes.iter_mut().enumerate() {
                        let col = p * PANEL + c;
                        if col >= n {
                            continue;
                        }
                        for i in 0..g {
                            let row = q * g + i;
                            if row < k {
                                *lane |= get(row, col) << (bits * i);
                            }
                        }
                    }
                }
            });
        Self {
            data,
            groups,
            panels,
        }
    }
}

/// One orientation of a bf16 weight as GEMM operand B [k, n].
enum Bf16B {
    Panels(Panels),
    /// Portable: the bf16 values as f32, B[k][n] at `k * rs + n * cs`.
    F32 {
        w: Vec<f32>,
        rs: usize,
        cs: usize,
    },
}

/// A frozen weight of a linear layer, W [out, in] (or GPT-2's [in, out]), packed for
/// y = x·Wᵀ + b (and, for bf16, dx = dy·W).
pub(crate) struct PackedLinear {
    pub n_out: usize,
    pub n_in: usize,
    isa: Isa,
    kind: Kind,
}

enum Kind {
    Bf16 {
        /// Wᵀ, [in, out].
        fwd: Bf16B,
        /// W, [out, in], packed at the first backward pass (inference never needs it).
        bwd: OnceLock<Bf16B>,
        /// The weight as given, for packing `bwd`; bf16-rounded.
        src: Vec<u16>,
        conv1d: bool,
    },
    Int8 {
        /// Wᵀ quantized per output channel (column of Wᵀ).
        q: Int8B,
        scale: Vec<f32>,
    },
}

enum Int8B {
    Panels {
        panels: Panels,
        /// −128 · Σₖ q[k][n], per column, padded to whole panels.
        offset: Vec<i32>,
    },
    /// Portable: q as f32, [in, out] row-major.
    F32(Vec<f32>),
}

impl PackedLinear {
    /// Packs W (f32 values, [out, in], or [in, out] with `conv1d`) rounded to bf16.
    pub fn bf16(w: &[f32], n_out: usize, n_in: usize, conv1d: bool, isa: Isa) -> Result<Self> {
        check_len(w, n_out, n_in)?;
        let src: Vec<u16> = w.par_iter().map(|&x| bf16_bits(x)).collect();
        let fwd = Self::bf16_b(&src, n_out, n_in, conv1d, isa, true);
        Ok(Self {
            n_out,
            n_in,
            isa,
            kind: Kind::Bf16 {
                fwd,
                bwd: OnceLock::new(),
                src,
                conv1d,
            },
        })
    }

    /// Quantizes W per output channel: q = round(w · 127 / max|w|) in [−127, 127].
    pub fn int8(w: &[f32], n_out: usize, n_in: usize, conv1d: bool, isa: Isa) -> Result<Self> {
        check_len(w, n_out, n_in)?;
        // W[o][i] in either layout.
        let at = |o: usize, i: usize| {
            if conv1d {
                w[i * n_out + o]
            } else {
                w[o * n_in + i]
            }
        };
        let scale: Vec<f32> = (0..n_out)
            .into_par_iter()
            .map(|o| {
                // max|w| that keeps NaN (f32::max would drop it).
                let max = (0..n_in).map(|i| at(o, i).abs()).fold(0f32, |m, v| {
                    if m.is_nan() || v.is_nan() {
                        f32::NAN
                    } else {
                        m.max(v)
                    }
                });
                max / 127.0
            })
            .collect();
        if let Some(o) = scale.iter().position(|s| !s.is_finite()) {
            bail!("int8 quantization: output channel {o} of the weight is not finite")
        }
        let q = |o: usize, i: usize| -> i8 {
            match scale[o] {
                0.0 => 0,
                s => round_ties_even_small(at(o, i) / s).clamp(-127.0, 127.0) as i8,
            }
        };
        let q = match isa {
            isa if isa.panels() => {
                let panels = Panels::pack(n_in, n_out, 4, isa.whole_groups(), |i, o| {
                    u32::from(q(o, i) as u8)
                });
                let mut offset = vec![0i32; panels.panels * PANEL];
                offset[..n_out]
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(o, s)| {
                        *s = -128 * (0..n_in).map(|i| i32::from(q(o, i))).sum::<i32>();
                    });
                Int8B::Panels { panels, offset }
            }
            _ => {
                let mut f = vec![0f32; n_in * n_out];
                f.par_chunks_mut(n_out).enumerate().for_each(|(i, row)| {
                    for (o, v) in row.iter_mut().enumerate() {
                        *v = f32::from(q(o, i));
                    }
                });
                Int8B::F32(f)
            }
        };
        let mut scale = scale;
        scale.resize(n_out.div_ceil(PANEL) * PANEL, 0.0);
        Ok(Self {
            n_out,
            n_in,
            isa,
            kind: Kind::Int8 { q, scale },
        })
    }

    /// B for `fwd` (Wᵀ, [in, out]) or the backward pass (W, [out, in]).
    fn bf16_b(src: &[u16], n_out: usize, n_in: usize, conv1d: bool, isa: Isa, fwd: bool) -> Bf16B {
        // Element (o, i) of W is at o·so + i·si in `src`.
        let (so, si) = if conv1d { (1, n_out) } else { (n_in, 1) };
        // B[k][n]: fwd k = i, n = o; bwd k = o, n = i.
        let (k, n, sk, sn) = if fwd {
            (n_in, n_out, si, so)
        } else {
            (n_out, n_in, so, si)
        };
        match isa {
            isa if isa.panels() => {
                Bf16B::Panels(Panels::pack(k, n, 2, isa.whole_groups(), |r, c| {
                    u32::from(src[r * sk + c * sn])
                }))
            }
            _ => Bf16B::F32 {
                w: src.iter().map(|&b| bf16_value(b)).collect(),
                rs: sk,
                cs: sn,
            },
        }
    }

    /// y = x·Wᵀ + b for x [m, in] (m = x.len() / in), into y [m, out], every element written.
    pub fn forward(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [std::mem::MaybeUninit<f32>]) {
        let m = x.len() / self.n_in;
        assert_eq!(y.len(), m * self.n_out, "packed linear: output size");
        let bias = bias.map(|b| padded(b, self.n_out));
        match &self.kind {
            Kind::Bf16 { fwd, .. } => {
                self.bf16_gemm(fwd, x, self.n_in, self.n_out, bias.as_deref(), y)
            }
            Kind::Int8 { q, scale } => self.int8_gemm(q, scale, x, bias.as_deref(), y),
        }
    }

    /// dx = dy·W for dy [m, out], into dx [m, in]. Only bf16 weights have a backward pass.
    pub fn input_grad(&self, g: &[f32], dx: &mut [std::mem::MaybeUninit<f32>]) -> Result<()> {
        let Kind::Bf16 {
            bwd, src, conv1d, ..
        } = &self.kind
        else {
            bail!("an int8 weight has no backward pass (int8 is for inference)")
        };
        let b =
            bwd.get_or_init(|| Self::bf16_b(src, self.n_out, self.n_in, *conv1d, self.isa, false));
        self.bf16_gemm(b, g, self.n_out, self.n_in, None, dx);
        Ok(())
    }

    fn bf16_gemm(
        &self,
        b: &Bf16B,
        x: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        y: &mut [std::mem::MaybeUninit<f32>],
    ) {
        let m = x.len() / k;
        // A rounded to bf16, rows padded to whole pairs (and, for AMX, to the panels' whole
        // tiles of groups, with whole tiles of rows).
        let groups = match b {
            Bf16B::Panels(p) => p.groups,
            Bf16B::F32 { .. } => k.div_ceil(2),
        };
        let rows = m.next_multiple_of(self.isa.tile_rows());
        // Not zeroed first: the conversion writes every half (1.5% of a bf16 inference step
        // was the memset).
        let mut a = Box::<[u32]>::new_uninit_slice(rows * groups);
        let (a_rows, a_pad) = a.split_at_mut(m * groups);
        a_pad.fill(std::mem::MaybeUninit::new(0));
        a_rows
            .par_chunks_mut(groups * rows_per_task(k))
            .zip(x.par_chunks(k * rows_per_task(k)))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_mut(groups).zip(src.chunks(k)) {
                    // SAFETY: a row of `groups` u32 is 2·groups u16 of the same memory, all
                    // written here before anything reads them: k by the conversion, the pad.
                    let halves: &mut [u16] = unsafe {
                        std::slice::from_raw_parts_mut(d.as_mut_ptr().cast(), 2 * groups)
                    };
                    bf16_row(s, halves, self.isa.native());
                    halves[k..].fill(0);
                }
            });
        // SAFETY: the loop wrote every row, the padding rows are zeros.
        let a = unsafe { a.assume_init() };
        match b {
            #[cfg(target_arch = "x86_64")]
            Bf16B::Panels(p) => tiles(m, n, p, &a, y, self.isa.tile_rows(), |_, rows, t, panel| {
                let e = Epilogue {
                    bias: bias.map(|b| &b[panel * NR..][..NR]),
                    col_scale: None,
                    col_offset: None,
                    row_scale: None,
                };
                // SAFETY: packing made this ISA's panels only after detecting its features;
                // A's rows and groups are padded as its tiles read them.
                unsafe {
                    match self.isa {
                        Isa::Amx => amx::bf16(&mut amx::Amx::new(), rows, t, &e),
                        #[cfg(test)]
                        Isa::AmxModel => amx::bf16(&mut amx::TileModel::default(), rows, t, &e),
                        _ => avx512::bf16(rows, t, &e),
                    }
                }
            }),
            #[cfg(not(target_arch = "x86_64"))]
            Bf16B::Panels(_) => unreachable!("panels are packed only for x86-64"),
            Bf16B::F32 { w, rs, cs } => {
                let a: Vec<f32> = a
                    .par_iter()
                    .flat_map_iter(|&p| [bf16_value(p as u16), bf16_value((p >> 16) as u16)])
                    .collect();
                let am = Mat::strided(&a, m, k, 2 * groups);
                let bm = Mat::general(w, k, n, *rs, *cs);
                portable_epilogue(
                    y,
                    n,
                    bias,
                    |y| gemm_acc(y, am, bm, 1.0, true),
                    |y| {
                        gemm_into(y, am, bm, 1.0, true);
                    },
                );
            }
        }
    }

    fn int8_gemm(
        &self,
        q: &Int8B,
        scale: &[f32],
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [std::mem::MaybeUninit<f32>],
    ) {
        let (k, n) = (self.n_in, self.n_out);
        let m = x.len() / k;
        // A quantized per row: u8 = q + 128, rows padded to whole quads (with q = 0), and for
        // AMX to the panels' whole tiles of groups, with whole tiles of rows.
        let groups = match q {
            Int8B::Panels { panels, .. } => panels.groups,
            Int8B::F32(_) => k.div_ceil(4),
        };
        let rows = m.next_multiple_of(self.isa.tile_rows());
        let mut a = vec![0x8080_8080u32; rows * groups];
        let mut row_scale = vec![0f32; m];
        a.par_chunks_mut(groups * rows_per_task(k))
            .zip(row_scale.par_chunks_mut(rows_per_task(k)))
            .zip(x.par_chunks(k * rows_per_task(k)))
            .for_each(|((dst, rs), src)| {
                for ((d, s), r) in dst.chunks_mut(groups).zip(src.chunks(k)).zip(rs) {
                    *r = self.quantize_row(s, as_u8(d));
                }
            });
        match q {
            #[cfg(target_arch = "x86_64")]
            Int8B::Panels { panels, offset } => {
                tiles(
                    m,
                    n,
                    panels,
                    &a,
                    y,
                    self.isa.tile_rows(),
                    |r0, rows, t, panel| {
                        let e = Epilogue {
                            bias: bias.map(|b| &b[panel * NR..][..NR]),
                            col_scale: Some(&scale[panel * NR..][..NR]),
                            col_offset: Some(&offset[panel * NR..][..NR]),
                            row_scale: Some(&row_scale[r0..r0 + rows]),
                        };
                        // SAFETY: packing made this ISA's panels only after detecting its
                        // features; A's rows and groups are padded as its tiles read them.
                        unsafe {
                            match self.isa {
                                Isa::Amx => amx::int8(&mut amx::Amx::new(), rows, t, &e),
                                #[cfg(test)]
                                Isa::AmxModel => {
                                    amx::int8(&mut amx::TileModel::default(), rows, t, &e)
                                }
                                _ => avx512::int8(rows, t, &e),
                            }
                        }
                    },
                )
            }
            #[cfg(not(target_arch = "x86_64"))]
            Int8B::Panels { .. } => unreachable!("panels are packed only for x86-64"),
            Int8B::F32(w) => {
                let a: Vec<f32> = a
                    .par_iter()
                    .flat_map_iter(|&p| {
                        (0..4).map(move |i| f32::from((p >> (8 * i)) as u8) - 128.0)
                    })
                    .collect();
                let (am, bm) = (Mat::strided(&a, m, k, 4 * groups), Mat::of(w, k, n));
                let mut acc = uninit_buffer(m * n);
                let acc = gemm_into(&mut acc, am, bm, 1.0, true);
                y.par_chunks_mut(n)
                    .zip(acc.par_chunks(n))
                    .zip(&row_scale)
                    .for_each(|((yr, ar), &rs)| {
                        for (j, (yv, &av)) in yr.iter_mut().zip(ar).enumerate() {
                            let b = bias.map_or(0.0, |b| b[j]);
                            yv.write(av * (rs * scale[j]) + b);
                        }
                    });
            }
        }
    }
}

impl PackedLinear {
    /// One row of A quantized (`simd::quantize_row`), with the AVX-512 loops where the ISA is.
    fn quantize_row(&self, src: &[f32], dst: &mut [u8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.isa.native() {
            // SAFETY: Isa::Avx512 and Amx are chosen after detecting avx512f; dst holds a row.
            return quantize_row(
                src,
                dst,
                |v| unsafe { avx512::max_abs_bits(v) },
                |s, d, inv| unsafe { avx512::quantize(s, d, inv) },
            );
        }
        quantize_row(src, dst, max_abs_bits, quantize_into)
    }
}

/// One row of A to bf16 bits, with the AVX-512 conversion where `avx512` (same results).
fn bf16_row(src: &[f32], dst: &mut [u16], avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: `avx512` is Isa::Avx512, chosen after detecting avx512bf16; dst is a row of
        // A, at least src.len() long.
        return unsafe { avx512::to_bf16(src, dst) };
    }
    let _ = avx512;
    bf16_row_portable(src, dst);
}

fn check_len(w: &[f32], n_out: usize, n_in: usize) -> Result<()> {
    if w.len() != n_out * n_in || n_out == 0 || n_in == 0 {
        bail!(
            "packed linear: a weight of {} values is not {n_out} × {n_in}",
            w.len()
        )
    }
    Ok(())
}

/// The bias padded with zeros to whole panels (the microkernels read NR values per panel).
fn padded(b: &[f32], n: usize) -> Vec<f32> {
    let mut v = b[..n].to_vec();
    v.resize(n.div_ceil(PANEL) * PANEL, 0.0);
    v
}

fn rows_per_task(k: usize) -> usize {
    (16384 / k.max(1)).max(1)
}

fn as_u8(d: &mut [u32]) -> &mut [u8] {
    // SAFETY: u32 memory is valid as four times as many u8.
    unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast(), d.len() * 4) }
}

/// Portable epilogue: y = bias + a·b (bias rows first, then an accumulating GEMM), or a·b.
fn portable_epilogue(
    y: &mut [std::mem::MaybeUninit<f32>],
    n: usize,
    bias: Option<&[f32]>,
    acc: impl FnOnce(&mut [f32]),
    write: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) {
    match bias {
        Some(b) => {
            y.par_chunks_mut(n)
                .for_each(|r| super::matrix::write_copy(r, b));
            // SAFETY: every row now holds the bias.
            acc(unsafe { super::matrix::assume_init_mut(y) });
        }
        None => write(y),
    }
}

/// Rows of A per parallel task, and the most panel bytes a task keeps in cache.
#[cfg(target_arch = "x86_64")]
const MC: usize = 64;
#[cfg(target_arch = "x86_64")]
const GROUP_BYTES: usize = 192 << 10;

/// Runs `tile(first row, rows, tile, panel)` over every `mr` × NR tile of C = A·B [m, n], in parallel tasks
/// of up to MC rows × a group of panels that fits in cache (A's tile stays in L1 across the
/// group's panels; the group stays in L2 across the task's tiles). A is [m, groups] 32-bit
/// groups; `y` is C, [m, n], written entirely.
#[cfg(target_arch = "x86_64")]
fn tiles(
    m: usize,
    n: usize,
    b: &Panels,
    a: &[u32],
    y: &mut [std::mem::MaybeUninit<f32>],
    mr: usize,
    tile: impl Fn(usize, usize, &Tile, usize) + Sync,
) {
    let groups = b.groups;
    assert!(
        a.len() >= m * groups && y.len() >= m * n,
        "packed gemm: operand sizes"
    );
    let per_group = (GROUP_BYTES / (groups * NR * 4).max(1)).clamp(1, b.panels);
    let (row_tasks, col_tasks) = (m.div_ceil(MC), b.panels.div_ceil(per_group));
    let c = super::matrix::SendPtr::of(y);
    let task = |t: usize| {
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let rows = rt * MC..((rt + 1) * MC).min(m);
        let panels = ct * per_group..((ct + 1) * per_group).min(b.panels);
        for r0 in rows.clone().step_by(mr) {
            let mr = mr.min(rows.end - r0);
            for p in panels.clone() {
                let t = Tile {
                    a: a[r0 * groups..].as_ptr(),
                    lda: groups,
                    groups,
                    b: b.data[p * groups * NR..].as_ptr(),
                    c: c.add(r0 * n + p * NR),
                    ldc: n,
                    cols: n - p * NR,
                };
                tile(r0, mr, &t, p);
            }
        }
    };
    let work = m * n * groups;
    if work >= 1 << 16 && rayon::current_num_threads() > 1 {
        (0..row_tasks * col_tasks).into_par_iter().for_each(task);
    } else {
        (0..row_tasks * col_tasks).for_each(task);
    }
}

/// `x.round_ties_even()` for |x| < 2²², by adding and subtracting 1.5 · 2²³ (the sum's rounding
/// to a whole number is the IEEE default, ties to even). The portable target has no SSE4.1
/// `roundss`, so `round_ties_even` is a call to libm's `rintf`: 7.5% of the production tests'
/// time went there, quantizing MiniLM's weights.
pub(super) fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}
