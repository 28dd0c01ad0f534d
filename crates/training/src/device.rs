//! Where training and inference run: `training.device` and `training.dtype`
//! resolved to a candle device and the dtype of the frozen weights.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use pipeline::config::{parse_device, DeviceSetting};

/// `training.device` → the device and its name; a GPU must be asked of a CUDA build.
pub fn select_device(setting: &str) -> Result<(Device, String)> {
    let cuda = |n: usize| -> Result<(Device, String)> {
        if !cfg!(feature = "cuda") {
            bail!(
                "training.device is {setting:?}, but this build has no CUDA support: \
                 build with `just build-cuda` (cargo build --release --features cuda), or set training.device to auto or cpu"
            );
        }
        let device = Device::new_cuda(n)
            .with_context(|| format!("training.device {setting:?}: cannot open CUDA device {n}"))?;
        Ok((device, format!("cuda:{n}")))
    };
    match parse_device(setting).context("training.device")? {
        DeviceSetting::Cpu => Ok((Device::Cpu, "cpu".into())),
        DeviceSetting::Cuda(n) => cuda(n),
        // A CUDA build without a usable GPU falls back to the CPU.
        DeviceSetting::Auto if cfg!(feature = "cuda") => {
            cuda(0).or_else(|_| Ok((Device::Cpu, "cpu".into())))
        }
        DeviceSetting::Auto => Ok((Device::Cpu, "cpu".into())),
    }
}

/// `training.dtype` for the frozen weights: auto = f32 on the CPU, bf16 on a GPU.
pub fn select_dtype(setting: &str, device: &Device) -> Result<DType> {
    Ok(match setting {
        "auto" if device.is_cpu() => DType::F32,
        "auto" => DType::BF16,
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("training.dtype: unknown dtype {other:?}"),
    })
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}
