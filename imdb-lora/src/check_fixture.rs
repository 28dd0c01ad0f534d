//! `imdb-lora check-fixture`: a reference fixture (a checkpoint, a PEFT adapter and the logits and
//! gradients transformers + PEFT computed for them; `../shared/fixtures/README.md`) run on a
//! device: base logits, LoRA logits, probabilities and every LoRA/head gradient, one JSON line
//! each; exit status 1 when any is off by more than the dtype's tolerance.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Parser;
use lora_classifier::{Checkpoint, Mode, SequenceClassifier};

#[derive(Parser)]
#[command(
    name = "check-fixture",
    about = "Run a transformers + PEFT reference fixture on a device and compare"
)]
struct Args {
    /// The fixture folder: base/, adapter/, expected.safetensors.
    fixture: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: inference::device::DeviceSetting,
    /// Frozen weights: auto, f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: inference::device::DtypeSetting,
}

pub fn main(argv: impl Iterator<Item = OsString>) {
    let args = Args::parse_from(argv);
    pipeline::cli::run_stage("check-fixture", || run(&args));
}

/// max |a − b|, compared on the CPU (the expected tensors live there); infinite where either
/// side holds a NaN or infinity.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let on_cpu = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    };
    let (a, b) = (on_cpu(a)?, on_cpu(b)?);
    anyhow::ensure!(a.len() == b.len(), "{} vs {} elements", a.len(), b.len());
    Ok(a.iter().zip(&b).fold(0f64, |m, (x, y)| {
        if x.is_finite() && y.is_finite() {
            m.max((x - y).abs())
        } else {
            f64::INFINITY
        }
    }))
}

fn max_abs(a: &Tensor) -> Result<f64> {
    Ok(a.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
}

fn run(args: &Args) -> Result<()> {
    let (device, device_name) = inference::device::select_device(args.device)?;
    let dtype = inference::device::select_dtype(args.dtype, &device);
    let f32_weights = dtype == DType::F32;
    let expected_path = args.fixture.join("expected.safetensors");
    let expected = candle_core::safetensors::load(&expected_path, &Device::Cpu)
        .with_context(|| format!("reading {}", expected_path.display()))?;
    let get = |name: &str| -> Result<Tensor> {
        expected
            .get(name)
            .cloned()
            .with_context(|| format!("{}: no tensor {name}", expected_path.display()))
    };
    let ids = get("input_ids")?.to_dtype(DType::U32)?.to_device(&device)?;
    let mask = get("attention_mask")?
        .to_dtype(DType::U32)?
        .to_device(&device)?;
    let labels = get("labels")?.to_dtype(DType::U32)?.to_device(&device)?;
    let ckpt = Checkpoint::open(&args.fixture.join("base"))?;

    let mut failed = Vec::new();
    let mut report = |what: &str, err: f64, tolerance: f64| {
        let ok = err <= tolerance;
        println!(
            "{}",
            serde_json::json!({
                "check": what, "fixture": args.fixture.file_name().map(|n| n.to_string_lossy()),
                "device": device_name, "dtype": inference::device::dtype_name(dtype),
                "max_abs_err": err, "tolerance": tolerance, "ok": ok,
            })
        );
        if !ok {
            failed.push(what.to_string());
        }
    };
    // f32 on any device computes what PyTorch computes up to float rounding; bf16 weights are
    // judged on the probabilities (2e-2) and on gradients relative to their size (1e-1: bf16
    // activations alone move them by 1e-2 to 5e-2 on the CPU; a wrong gradient is off by ~1).
    let (logit_tol, prob_tol, grad_rel_tol) = if f32_weights {
        (1e-4, 1e-5, 1e-3)
    } else {
        (f64::INFINITY, 2e-2, 1e-1)
    };
    let probs = |logits: &Tensor| {
        let logits = logits.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        candle_nn::ops::softmax(&logits, D::Minus1)
    };

    let base = SequenceClassifier::new(&ckpt, None, 0, &device, dtype)?;
    let logits = base.forward(&ids, &mask, Mode::Eval)?;
    let want = get("base_logits")?;
    if f32_weights {
        report("base logits", max_abs_diff(&logits, &want)?, logit_tol);
    }
    report(
        "base probabilities",
        max_abs_diff(&probs(&logits)?, &probs(&want)?)?,
        prob_tol,
    );

    let model =
        SequenceClassifier::load_adapter(&ckpt, &args.fixture.join("adapter"), &device, dtype)?;
    let logits = model.forward(&ids, &mask, Mode::Eval)?;
    let want = get("lora_logits")?;
    if f32_weights {
        report("lora logits", max_abs_diff(&logits, &want)?, logit_tol);
    }
    report(
        "lora probabilities",
        max_abs_diff(&probs(&logits)?, &probs(&want)?)?,
        prob_tol,
    );
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
    let grads = loss.backward()?;
    for (name, var) in model.trainable() {
        let want = get(&format!("grad/{name}"))?;
        let got = grads
            .get(&var)
            .with_context(|| format!("no gradient for {name}"))?;
        let rel = max_abs_diff(got, &want)? / max_abs(&want)?.max(1e-30);
        report(&format!("grad {name} (relative)"), rel, grad_rel_tol);
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
