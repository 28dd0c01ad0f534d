//! Where training and inference run: a device setting and a dtype setting resolved to a
//! candle device and the dtype of the frozen weights.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
pub use choices::{DeviceSetting, DtypeSetting};

/// The device `setting` names, and its name; a GPU must be asked of a CUDA build. `auto` is
/// the first GPU when the build has CUDA and one can be opened, else the CPU.
pub fn select_device(setting: DeviceSetting) -> Result<(Device, String)> {
    let cuda = |n: usize| -> Result<(Device, String)> {
        if !cfg!(feature = "cuda") {
            bail!(
                "device {setting} needs a build with CUDA support: build with `just build-cuda` \
                 (cargo build --release --features cuda), or choose auto or cpu"
            );
        }
        let device = Device::new_cuda(n)
            .with_context(|| format!("device {setting}: cannot open CUDA device {n}"))?;
        Ok((device, format!("cuda:{n}")))
    };
    match setting {
        DeviceSetting::Cpu => Ok((Device::Cpu, "cpu".into())),
        DeviceSetting::Cuda(n) => cuda(n),
        // A CUDA build without a usable GPU falls back to the CPU.
        DeviceSetting::Auto if cfg!(feature = "cuda") => {
            cuda(0).or_else(|_| Ok((Device::Cpu, "cpu".into())))
        }
        DeviceSetting::Auto => Ok((Device::Cpu, "cpu".into())),
    }
}

/// The frozen weights' dtype: auto = bf16 on a GPU and on a CPU with AVX512-BF16 kernels
/// (measured on the full IMDb run: test accuracy and ROC-AUC within 0.001 of f32, README),
/// else f32 (where bf16 would only be emulated, slower than f32).
pub fn select_dtype(setting: DtypeSetting, device: &Device) -> DType {
    match setting {
        DtypeSetting::Auto if device.is_cpu() => auto_cpu_dtype(
            lora_classifier::cpu_has_native_bf16(),
            lora_classifier::cpu_has_amx_bf16(),
        ),
        DtypeSetting::Auto => DType::BF16,
        DtypeSetting::F32 => DType::F32,
        DtypeSetting::Bf16 => DType::BF16,
        DtypeSetting::F16 => DType::F16,
    }
}

/// `auto` on the CPU: bf16 where our AVX512-BF16 kernels are the fastest path (AMD Zen 4:
/// `just all` 7 min 46 s against f32's 13 min 30 s), f32 elsewhere: where bf16 would only be
/// emulated, and on CPUs with AMX, where our bf16 kernels (AVX512-BF16, no AMX tiles yet) are
/// slower than f32 (Intel Emerald Rapids, issue #31: inference 70 against 92 samples/s, `just
/// all` 813 s against 555 s). `auto` is never the slower of the two on a CPU measured so far.
fn auto_cpu_dtype(native_bf16: bool, amx_bf16: bool) -> DType {
    if native_bf16 && !amx_bf16 {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The dtype as the settings spell it.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this CPU runs bf16 natively, as std detects it.
    fn native_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var(lora_classifier::CPU_ISA_ENV).as_deref() != Ok("portable")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    #[test]
    fn auto_on_the_cpu_is_bf16_only_with_native_bf16_and_without_amx() {
        assert_eq!(auto_cpu_dtype(true, false), DType::BF16);
        assert_eq!(auto_cpu_dtype(true, true), DType::F32);
        assert_eq!(auto_cpu_dtype(false, false), DType::F32);
        assert_eq!(auto_cpu_dtype(false, true), DType::F32);
    }

    #[test]
    fn auto_is_bf16_on_a_cpu_with_avx512_bf16_and_the_cpu_without_cuda() {
        let want = if native_bf16() && !lora_classifier::cpu_has_amx_bf16() {
            DType::BF16
        } else {
            DType::F32
        };
        assert_eq!(select_dtype(DtypeSetting::Auto, &Device::Cpu), want);
        assert_eq!(select_dtype(DtypeSetting::F32, &Device::Cpu), DType::F32);
        assert_eq!(select_dtype(DtypeSetting::Bf16, &Device::Cpu), DType::BF16);
        if !cfg!(feature = "cuda") {
            let (device, name) = select_device(DeviceSetting::Auto).unwrap();
            assert!(device.is_cpu() && name == "cpu");
            let err = select_device(DeviceSetting::Cuda(1))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cuda:1") && err.contains("--features cuda"),
                "{err}"
            );
        }
    }
}
