//! Intel AMX (Advanced Matrix Extensions) tiles for the packed GEMMs (`packed`): one block of
//! [`ROWS`] rows × NR columns of C = A·B over the whole inner dimension per call, with
//! AMX-BF16 (`tdpbf16ps`, f32 accumulation) or AMX-INT8 (`tdpbusd`: A's u8 × B's i8, i32
//! accumulation), reading the same panels as the AVX-512 microkernels (`avx512`), whose groups
//! are then padded to whole tiles ([`GROUPS`]), and the same epilogues.
//!
//! The GEMM is written once against [`TileOps`], the six tile instructions it uses:
//! - [`Amx`] issues them (inline assembly: stable Rust has no AMX intrinsics);
//! - [`TileModel`] computes what Intel's instruction reference says they compute, in scalar
//!   code, so the blocking, the addressing, the padding and the epilogues are tested on every
//!   CPU (`packed_tests` runs every packed GEMM test through it).
//!
//! Only [`Amx`] itself needs an AMX CPU. Until it has run on one, `Isa::detect` takes this path
//! only when `IMDB_LORA_CPU_ISA=amx` asks for it (and [`available`] says the CPU and the OS
//! allow it); `packed_tests` compares it with the model wherever it can run.

use std::arch::asm;
use std::cell::Cell;

use super::avx512::{Epilogue, Tile, NR};
use super::packed::Precision;

/// Rows of A (and C) per block: a tile's 16 rows.
pub(super) const ROWS: usize = 16;
/// 32-bit groups (bf16 pairs, int8 quads) per tile row of A, and rows of a B tile: 64 bytes.
/// The inner dimension of A and of the panels is padded with zeros to a multiple of this.
pub(super) const GROUPS: usize = 16;
/// B tiles (16 columns each) per panel.
const NB: usize = NR / 16;

/// The dot product a block runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dot {
    /// `tdpbf16ps`: pairs of bf16, f32 sums.
    Bf16,
    /// `tdpbusd`: quads of u8 (A) by i8 (B), i32 sums.
    Int8,
}

/// The tile instructions the GEMM is written in. Every tile is configured as 16 rows of 64
/// bytes (palette 1). Tiles 0..NB hold C, tile [`A`] A's rows, tiles [`B`].. B's columns.
pub(super) trait TileOps {
    /// `tilezero tmm{T}`.
    fn zero<const T: u8>(&mut self);
    /// `tileloadd tmm{T}, [p + stride]`: 16 rows of 64 bytes, `stride` bytes apart.
    ///
    /// # Safety
    /// The 16 rows are readable.
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize);
    /// `tilestored [p + stride], tmm{T}`.
    ///
    /// # Safety
    /// The 16 rows are writable.
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize);
    /// `tdpbf16ps` / `tdpbusd tmm{C}, tmm{A}, tmm{B}`: C += A·B.
    fn dot<const C: u8, const A: u8, const B: u8>(&mut self, dot: Dot);
}

/// The tile that holds A's rows.
const A: u8 = 3;
/// The first of the NB tiles that hold B's columns.
const B: u8 = 4;

/// C[ROWS, NR] = A[ROWS, groups] · B panel[groups, NR] into `acc` (row-major, NR per row; f32
/// bits for bf16, i32 for int8).
///
/// # Safety
/// `t.a` has ROWS rows of `t.lda` groups and `t.b` `t.groups` rows of NR groups, `t.groups` a
/// multiple of [`GROUPS`] (`packed` pads both).
unsafe fn block<T: TileOps>(u: &mut T, dot: Dot, t: &Tile, acc: &mut [u32; ROWS * NR]) {
    const { assert!(NB == 3, "the block is written for three B tiles") };
    debug_assert!(t.groups.is_multiple_of(GROUPS));
    u.zero::<0>();
    u.zero::<1>();
    u.zero::<2>();
    let (a, b) = (t.a.cast::<u8>(), t.b.cast::<u8>());
    let (lda, ldb) = (4 * t.lda, 4 * NR);
    for g in (0..t.groups).step_by(GROUPS) {
        // SAFETY: within A's rows and B's panel, as the caller guarantees.
        unsafe {
            u.load::<A>(a.add(4 * g), lda);
            let b = b.add(4 * g * NR);
            u.load::<B>(b, ldb);
            u.load::<{ B + 1 }>(b.add(64), ldb);
            u.load::<{ B + 2 }>(b.add(128), ldb);
        }
        u.dot::<0, A, B>(dot);
        u.dot::<1, A, { B + 1 }>(dot);
        u.dot::<2, A, { B + 2 }>(dot);
    }
    let c = acc.as_mut_ptr().cast::<u8>();
    // SAFETY: `acc` is ROWS rows of NR u32, each tile's 16 columns 64 bytes of a row.
    unsafe {
        u.store::<0>(c, ldb);
        u.store::<1>(c.add(64), ldb);
        u.store::<2>(c.add(128), ldb);
    }
}

/// A bf16 block of `rows` ≤ [`ROWS`] rows of C written to `t.c`, the bias added: as
/// `avx512::bf16` computes a tile.
///
/// # Safety
/// As [`block`]; `t.c` as [`Tile`] says for `rows` rows; the epilogue's bias holds NR values.
pub(super) unsafe fn bf16<T: TileOps>(u: &mut T, rows: usize, t: &Tile, e: &Epilogue) {
    let mut acc = [0u32; ROWS * NR];
    // SAFETY: as the caller guarantees.
    unsafe { block(u, Dot::Bf16, t, &mut acc) };
    for (r, acc) in acc.chunks_exact(NR).take(rows).enumerate() {
        for (j, &bits) in acc.iter().enumerate().take(t.cols.min(NR)) {
            let y = f32::from_bits(bits) + e.bias.map_or(0.0, |b| b[j]);
            // SAFETY: row r < rows, column j < cols.
            unsafe { t.c.add(r * t.ldc + j).write(y) };
        }
    }
}

/// An int8 block: C = row_scale · col_scale · (A_u8·B_i8 + col_offset) + bias, as
/// `avx512::int8` computes a tile (the same operations, fused multiply-add included).
///
/// # Safety
/// As [`bf16`]; the epilogue's col_scale and col_offset hold NR values and row_scale `rows`.
pub(super) unsafe fn int8<T: TileOps>(u: &mut T, rows: usize, t: &Tile, e: &Epilogue) {
    let mut acc = [0u32; ROWS * NR];
    // SAFETY: as the caller guarantees.
    unsafe { block(u, Dot::Int8, t, &mut acc) };
    let (Some(cs), Some(co), Some(rs)) = (e.col_scale, e.col_offset, e.row_scale) else {
        return;
    };
    for (r, acc) in acc.chunks_exact(NR).take(rows).enumerate() {
        for (j, &bits) in acc.iter().enumerate().take(t.cols.min(NR)) {
            let y = (bits as i32).wrapping_add(co[j]) as f32;
            let s = rs[r] * cs[j];
            let y = match e.bias {
                Some(b) => y.mul_add(s, b[j]),
                None => y * s,
            };
            // SAFETY: row r < rows, column j < cols.
            unsafe { t.c.add(r * t.ldc + j).write(y) };
        }
    }
}

/// Whether this CPU and OS let this process run the AMX tiles for `precision`: `Err` says
/// what is missing. CPUID leaf 7 (AMX-TILE, and AMX-BF16 or AMX-INT8), AVX-512 for the
/// conversions and epilogues around the tiles, and on Linux the kernel's permission to use
/// the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
pub(crate) fn available(precision: Precision) -> Result<(), String> {
    if !cpu_has(precision) {
        let name = match precision {
            Precision::Bf16 => "amx_bf16",
            Precision::Int8 => "amx_int8",
        };
        return Err(format!("the CPU lacks amx_tile or {name} (CPUID leaf 7)"));
    }
    // The conversions and quantization around the tiles are the AVX-512 path's.
    let around = match precision {
        Precision::Bf16 => is_x86_feature_detected!("avx512bf16"),
        Precision::Int8 => true,
    };
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && around) {
        return Err("the CPU lacks avx512f, avx512bw or (for bf16) avx512bf16".into());
    }
    tile_permission()
}

/// Whether the CPU has the AMX tiles and their `precision` (CPUID leaf 7, EDX: AMX-TILE bit 24,
/// AMX-BF16 bit 22, AMX-INT8 bit 25), whether or not the OS lets this process use them.
pub(crate) fn cpu_has(precision: Precision) -> bool {
    const AMX_TILE: u32 = 1 << 24;
    let bit = match precision {
        Precision::Bf16 => 1 << 22,
        Precision::Int8 => 1 << 25,
    };
    #[allow(unused_unsafe)] // `__cpuid` is safe in newer Rust
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where leaf 0 lists it.
    unsafe {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        __cpuid(0).eax >= 7 && __cpuid_count(7, 0).edx & (AMX_TILE | bit) == AMX_TILE | bit
    }
}

/// Linux hands out the tile data state (8 KiB of XSAVE area per thread) on request only.
#[cfg(target_os = "linux")]
fn tile_permission() -> Result<(), String> {
    use std::sync::OnceLock;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    static GRANTED: OnceLock<Result<(), String>> = OnceLock::new();
    GRANTED
        .get_or_init(|| {
            // SAFETY: a plain system call with integer arguments; it changes only what the
            // process may use (for every thread, present and future).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(format!(
                    "Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: {})",
                    std::io::Error::last_os_error()
                ))
            }
        })
        .clone()
}

#[cfg(not(target_os = "linux"))]
fn tile_permission() -> Result<(), String> {
    Err("the AMX path asks Linux for the tile state; this OS is not Linux".into())
}

/// Palette 1, every tile 16 rows of 64 bytes (the layout `ldtilecfg` reads).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

thread_local! {
    /// Whether this thread's tiles hold [`CONFIG`]. Nothing else in the process configures
    /// tiles, so a thread configures once and keeps it (Linux saves the state on a switch).
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// The AMX instructions themselves. Made only by [`Amx::new`], after [`available`].
pub(super) struct Amx(());

impl Amx {
    /// The tiles of this thread, configured.
    ///
    /// # Safety
    /// [`available`] returned Ok for the precision the caller runs.
    pub(super) unsafe fn new() -> Self {
        if !CONFIGURED.get() {
            // SAFETY: the CPU has AMX-TILE and the OS granted the state (the caller's
            // guarantee); CONFIG is a valid 64-byte palette-1 configuration.
            unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly)) };
            CONFIGURED.set(true);
        }
        Amx(())
    }
}

impl TileOps for Amx {
    fn zero<const T: u8>(&mut self) {
        // SAFETY: tiles configured (`Amx::new`).
        unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) };
    }

    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
        // SAFETY: as the caller guarantees; tiles configured.
        unsafe {
            asm!("tileloadd tmm{t}, [{p} + {s} * 1]", t = const T, p = in(reg) p,
                 s = in(reg) stride, options(nostack, readonly))
        };
    }

    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
        // SAFETY: as the caller guarantees; tiles configured.
        unsafe {
            asm!("tilestored [{p} + {s} * 1], tmm{t}", t = const T, p = in(reg) p,
                 s = in(reg) stride, options(nostack))
        };
    }

    fn dot<const C: u8, const A: u8, const B: u8>(&mut self, dot: Dot) {
        // SAFETY: tiles configured (`Amx::new`), for this precision (`available`).
        unsafe {
            match dot {
                Dot::Bf16 => asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A,
                                  b = const B, options(nostack, nomem)),
                Dot::Int8 => asm!("tdpbusd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A,
                                  b = const B, options(nostack, nomem)),
            }
        }
    }
}

/// The tile instructions in scalar code, as Intel's reference describes them for tiles of 16
/// rows × 64 bytes: what the GEMM is tested with on every CPU.
#[cfg(test)]
pub(super) struct TileModel {
    tiles: [[u8; 1024]; 8],
}

#[cfg(test)]
impl Default for TileModel {
    fn default() -> Self {
        // Garbage, not zeros: a block that uses a C tile without `tilezero` fails its tests.
        Self {
            tiles: [[0x5a; 1024]; 8],
        }
    }
}

#[cfg(test)]
impl TileModel {
    fn lane(&self, t: u8, row: usize, lane: usize) -> [u8; 4] {
        let at = row * 64 + 4 * lane;
        self.tiles[t as usize][at..at + 4].try_into().unwrap()
    }
}

#[cfg(test)]
impl TileOps for TileModel {
    fn zero<const T: u8>(&mut self) {
        self.tiles[T as usize] = [0; 1024];
    }

    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
        for r in 0..16 {
            // SAFETY: the row is readable (the caller's guarantee).
            let row = unsafe { std::slice::from_raw_parts(p.add(r * stride), 64) };
            self.tiles[T as usize][r * 64..(r + 1) * 64].copy_from_slice(row);
        }
    }

    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
        for r in 0..16 {
            let row = &self.tiles[T as usize][r * 64..(r + 1) * 64];
            // SAFETY: the row is writable (the caller's guarantee).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), p.add(r * stride), 64) };
        }
    }

    fn dot<const C: u8, const A: u8, const B: u8>(&mut self, dot: Dot) {
        // C[m][n] += Σ_k A[m][k-th group] · B[k][n-th group], k ascending; within a group,
        // tdpbf16ps adds its two products in order (each an exact f32 product of bf16s, with
        // f32 rounding of the sums), tdpbusd its four into the i32 sum.
        for m in 0..16 {
            for n in 0..16 {
                let mut c = u32::from_le_bytes(self.lane(C, m, n));
                for k in 0..16 {
                    let (a, b) = (self.lane(A, m, k), self.lane(B, k, n));
                    c = match dot {
                        Dot::Bf16 => {
                            let bf = |x: &[u8; 4], i: usize| {
                                f32::from_bits(
                                    u32::from(u16::from_le_bytes([x[2 * i], x[2 * i + 1]])) << 16,
                                )
                            };
                            let mut s = f32::from_bits(c);
                            for i in 0..2 {
                                s += bf(&a, i) * bf(&b, i);
                            }
                            s.to_bits()
                        }
                        Dot::Int8 => {
                            let mut s = c as i32;
                            for i in 0..4 {
                                s = s.wrapping_add(i32::from(a[i]) * i32::from(b[i] as i8));
                            }
                            s as u32
                        }
                    };
                }
                let at = m * 64 + 4 * n;
                self.tiles[C as usize][at..at + 4].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model's dot products on values worked out by hand: the pair and quad order, A's
    /// bytes unsigned and B's signed, and accumulation into what C held.
    #[test]
    fn the_model_computes_the_documented_products() {
        let bf = |x: f32| (x.to_bits() >> 16) as u16;
        let mut u = TileModel::default();
        // A row 0, group 0: (1, 2); B group row 0, column 0: (3, −4) → 1·3 + 2·(−4) = −5;
        // column 1: (0.5, 0.25) → 0.5 + 0.5 = 1. Group 1 of A (row 0) and row 1 of B: 2·10.
        let mut a = [0u8; 1024];
        let mut b = [0u8; 1024];
        let pair = |x: f32, y: f32| [bf(x).to_le_bytes(), bf(y).to_le_bytes()].concat();
        a[0..4].copy_from_slice(&pair(1.0, 2.0));
        a[4..8].copy_from_slice(&pair(2.0, 0.0));
        b[0..4].copy_from_slice(&pair(3.0, -4.0));
        b[4..8].copy_from_slice(&pair(0.5, 0.25));
        b[64..68].copy_from_slice(&pair(10.0, 7.0));
        let mut c = [0u8; 1024];
        c[0..4].copy_from_slice(&100f32.to_le_bytes());
        unsafe {
            u.load::<0>(c.as_ptr(), 64);
            u.load::<A>(a.as_ptr(), 64);
            u.load::<B>(b.as_ptr(), 64);
        }
        u.dot::<0, A, B>(Dot::Bf16);
        let mut out = [0u8; 1024];
        unsafe { u.store::<0>(out.as_mut_ptr(), 64) };
        let at = |i: usize| f32::from_le_bytes(out[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(at(0), 100.0 - 5.0 + 20.0);
        assert_eq!(at(1), 1.0);
        assert_eq!(at(2), 0.0);

        // int8: A bytes (200, 1, 0, 0) unsigned, B bytes (−1, 3, 0, 0) signed → −200 + 3.
        let (mut a, mut b) = ([0u8; 1024], [0u8; 1024]);
        a[0] = 200;
        a[1] = 1;
        b[0] = (-1i8) as u8;
        b[1] = 3;
        u.zero::<1>();
        unsafe {
            u.load::<A>(a.as_ptr(), 64);
            u.load::<B>(b.as_ptr(), 64);
        }
        u.dot::<1, A, B>(Dot::Int8);
        unsafe { u.store::<1>(out.as_mut_ptr(), 64) };
        assert_eq!(i32::from_le_bytes(out[0..4].try_into().unwrap()), -197);
        assert_eq!(i32::from_le_bytes(out[4..8].try_into().unwrap()), 0);
    }

    /// Here the AMX path says why it cannot run, or runs: a CPU with AMX and a Linux that
    /// grants the state must not be reported unavailable.
    #[test]
    fn availability_names_what_is_missing() {
        for p in [Precision::Bf16, Precision::Int8] {
            match available(p) {
                Ok(()) => {
                    // Only where the CPU has the tile instructions.
                    let edx = {
                        #[allow(unused_unsafe)]
                        // SAFETY: CPUID exists on x86-64.
                        unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx
                    };
                    assert_ne!(edx & (1 << 24), 0, "{p:?}: available without amx_tile");
                }
                Err(why) => {
                    assert!(why.contains("amx") || why.contains("avx512") || why.contains("Linux"));
                    test_support::report_platform_skip(&format!("AMX {p:?} tiles"), &why);
                }
            }
        }
    }
}
