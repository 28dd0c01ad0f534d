//! What computes a model's frozen layers, named in one line (`cpu bf16 avx512-bf16`, `cpu f32
//! avx512`, `cpu int8 avx512-vnni`, `cuda bf16`): the stages print it and record it, so a user
//! (and a benchmark table) can tell which path a figure came from.

use candle_core::{DType, Device};

use crate::cpu::{Isa, Precision};
use crate::Kernels;

/// The frozen weights' format: a float dtype, or int8 (the merged f32 weights quantized).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenWeights {
    Float(DType),
    Int8,
}

/// `device dtype kernel`: the device (`cpu`, `cuda`), the frozen weights' format, and on the
/// CPU the code that multiplies by them: the AMX tiles (`amx-bf16`, `amx-int8`, with
/// `IMDB_LORA_CPU_ISA=amx`), the fused AVX-512 microkernels (`avx512-bf16`, `avx512-vnni`),
/// the f32 GEMM's widest instructions (`avx512`, `avx2`, `portable`), the portable fallback of
/// the low-precision formats, or `composed` where `IMDB_LORA_KERNELS` asks for candle's
/// composed ops.
pub fn runs_on(device: &Device, weights: FrozenWeights, kernels: Kernels) -> String {
    let dtype = match weights {
        FrozenWeights::Float(DType::F32) => "f32",
        FrozenWeights::Float(DType::BF16) => "bf16",
        FrozenWeights::Float(DType::F16) => "f16",
        FrozenWeights::Float(_) => "other",
        FrozenWeights::Int8 => "int8",
    };
    if device.is_cuda() {
        return format!("cuda {dtype}");
    }
    if !device.is_cpu() {
        return format!("{device:?} {dtype}");
    }
    let kernel = match (kernels, weights) {
        (Kernels::Composed, FrozenWeights::Int8) | (Kernels::Auto, FrozenWeights::Int8) => {
            low_precision(Precision::Int8, "avx512-vnni")
        }
        (Kernels::Composed, _) => "composed",
        (Kernels::Auto, FrozenWeights::Float(DType::BF16)) => {
            low_precision(Precision::Bf16, "avx512-bf16")
        }
        (Kernels::Auto, FrozenWeights::Float(_)) => f32_gemm(),
    };
    format!("cpu {dtype} {kernel}")
}

fn low_precision(p: Precision, native: &'static str) -> &'static str {
    match Isa::detect(p) {
        Isa::Amx => match p {
            Precision::Bf16 => "amx-bf16",
            Precision::Int8 => "amx-int8",
        },
        Isa::Avx512 => native,
        _ => "portable",
    }
}

/// The widest instructions the f32 GEMM (the `gemm` crate, built with its AVX-512 kernels)
/// dispatches to on this CPU.
fn f32_gemm() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "portable"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_device_dtype_and_kernel() {
        let cpu = Device::Cpu;
        let f32 = runs_on(&cpu, FrozenWeights::Float(DType::F32), Kernels::Auto);
        assert!(
            ["cpu f32 avx512", "cpu f32 avx2", "cpu f32 portable"].contains(&f32.as_str()),
            "{f32}"
        );
        let bf16 = runs_on(&cpu, FrozenWeights::Float(DType::BF16), Kernels::Auto);
        assert_eq!(
            bf16,
            match Isa::detect(Precision::Bf16) {
                Isa::Amx => "cpu bf16 amx-bf16",
                Isa::Avx512 => "cpu bf16 avx512-bf16",
                _ => "cpu bf16 portable",
            }
        );
        let int8 = runs_on(&cpu, FrozenWeights::Int8, Kernels::Auto);
        assert!(int8.starts_with("cpu int8 "), "{int8}");
        assert_eq!(
            runs_on(&cpu, FrozenWeights::Float(DType::F32), Kernels::Composed),
            "cpu f32 composed"
        );
    }
}
