//! Which code computes the building blocks: the choice between the fused kernels and candle's
//! composed ops (`Kernels`, `KERNELS_ENV`), and what this CPU offers the frozen layers
//! (`cpu_kernels`, `cpu_has_native_bf16`, `cpu_has_amx_bf16`, `CPU_ISA_ENV`).

use crate::cpu;

/// Which implementation of the building blocks runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The fused kernels of the device: for f32 on the CPU, the CUDA kernels on a GPU (and a
    /// frozen-weight matmul without weight gradients for every other device and dtype).
    #[default]
    Auto,
    /// Stock candle ops everywhere: the reference the kernels are tested against.
    Composed,
}

/// Environment variable that sets the kernels of every model a process builds: `composed`
/// rules the fused kernels out when a result looks wrong; unset or `auto` is the default.
pub const KERNELS_ENV: &str = "IMDB_LORA_KERNELS";

impl Kernels {
    /// The kernels `KERNELS_ENV` asks for (Auto when unset or unrecognised).
    pub fn from_env() -> Self {
        match std::env::var(KERNELS_ENV).as_deref() {
            Ok("composed") => Kernels::Composed,
            _ => Kernels::Auto,
        }
    }
}

/// The code that computes frozen linear layers on this CPU in `precision` ("bf16" or "int8"):
/// "amx" (AMX tiles, with `IMDB_LORA_CPU_ISA=amx`), "avx512" (AVX512-BF16 / AVX512-VNNI
/// microkernels) or "portable" (f32 GEMMs on the rounded values, on a CPU without them or with
/// `IMDB_LORA_CPU_ISA=portable`). For reports and tests.
pub fn cpu_kernels(precision: &str) -> Option<&'static str> {
    let p = match precision {
        "bf16" => cpu::Precision::Bf16,
        "int8" => cpu::Precision::Int8,
        _ => return None,
    };
    Some(match cpu::Isa::detect(p) {
        cpu::Isa::Amx => "amx",
        cpu::Isa::Avx512 => "avx512",
        _ => "portable",
    })
}

/// Whether this CPU computes bf16 frozen layers with its own instructions (AVX512-BF16), not
/// by rounding to bf16 and multiplying in f32 as the portable code does.
pub fn cpu_has_native_bf16() -> bool {
    cpu::Isa::detect(cpu::Precision::Bf16).native()
}

/// Whether this CPU has AMX tiles for bf16 (Intel Xeon since Sapphire Rapids). Our AMX tiles
/// run only with `IMDB_LORA_CPU_ISA=amx` until they have run on such a CPU, and there the
/// AVX512-BF16 path is slower than f32 (issue #31), which `training.dtype: auto` takes into
/// account.
pub fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return cpu::amx_cpu_has(cpu::Precision::Bf16);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Environment variable that makes the CPU's bf16 and int8 layers run the portable code
/// (`portable`) as on a CPU without AVX512-BF16 / AVX512-VNNI.
pub const CPU_ISA_ENV: &str = cpu::ISA_ENV;
