//! `imdb-lora check-kernels`: [`kernel_parity::compare`] on a model and device of the user's
//! choosing. One JSON line per comparison; exit status 1 when any is off by more than the
//! dtype's tolerance.

use std::ffi::OsString;

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Parser;

use crate::{kernel_parity, models};

#[derive(Parser)]
#[command(
    name = "check-kernels",
    about = "Compare this device's kernels with candle's composed ops for one training step"
)]
struct Args {
    /// minilm; minilm-shape, bert-base, bert-large (random weights); a hub model id or a folder.
    #[arg(long, default_value = "minilm")]
    model: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: inference::device::DeviceSetting,
    /// Frozen weights: auto, f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: inference::device::DtypeSetting,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Largest error allowed, relative to the reference's largest magnitude; default 1e-4 for
    /// f32 weights, 3e-2 for bf16/f16 (the kernels round at other points than composed ops).
    #[arg(long)]
    tolerance: Option<f64>,
    /// Also the merged model's inference with int8 frozen weights (CPU) against the composed
    /// f32 ops, within 0.25 (quantization error).
    #[arg(long)]
    int8: bool,
}

pub fn main(argv: impl Iterator<Item = OsString>) {
    let args = Args::parse_from(argv);
    pipeline::cli::run_stage("check-kernels", || run(&args));
}

fn run(args: &Args) -> Result<()> {
    let (device, device_name) = inference::device::select_device(args.device)?;
    let dtype = inference::device::select_dtype(args.dtype, &device);
    let tolerance = args
        .tolerance
        .unwrap_or(kernel_parity::default_tolerance(dtype));
    let model = models::open(&args.model)?;
    if args.int8 && !device.is_cpu() {
        bail!("--int8 runs on the CPU only: use --device cpu")
    }
    let mut comparisons =
        kernel_parity::compare(&model.ckpt, &device, dtype, args.batch, args.seq)?
            .into_iter()
            .map(|c| (c, tolerance))
            .collect::<Vec<_>>();
    if args.int8 {
        let c = kernel_parity::compare_int8(&model.ckpt, args.batch, args.seq)?;
        comparisons.push((c, kernel_parity::INT8_TOLERANCE));
    }
    // Which code ran the CPU's low-precision layers: AVX-512 microkernels or the fallback.
    let cpu_kernels = |check: &str| match (check.contains("int8"), dtype) {
        (true, _) => lora_classifier::cpu_kernels("int8"),
        (false, DType::BF16) if device.is_cpu() => lora_classifier::cpu_kernels("bf16"),
        _ => None,
    };
    let mut failed = Vec::new();
    for (c, tolerance) in &comparisons {
        let ok = c.rel_err <= *tolerance;
        println!(
            "{}",
            serde_json::json!({
                "check": c.check, "model": model.name, "device": device_name,
                "dtype": models::dtype_name(dtype), "batch": args.batch, "seq": args.seq,
                "max_abs_err": c.max_abs_err, "rel_err": c.rel_err,
                "reference_scale": c.reference_scale, "tolerance": tolerance,
                "ok": ok, "cpu_kernels": cpu_kernels(&c.check),
            })
        );
        if !ok {
            failed.push(c.check.as_str());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} comparisons over tolerance: {}",
            failed.len(),
            failed.join(", ")
        )
    }
    Ok(())
}
