//! `imdb-lora check-kernels`: the kernels a device runs (the fused CPU kernels, or the CUDA
//! kernels and the frozen-weight matmul) against candle's composed ops on the same device — the
//! reference every implementation is tested against — for one training step: logits, loss and
//! the gradient of every trainable tensor, two AdamW updates (fused against composed, from the
//! same gradients), and the merged model's inference logits. One JSON line per comparison; exit
//! status 1 when any is off by more than the dtype's tolerance.

use std::ffi::OsString;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var};
use clap::Parser;
use lora_classifier::{Kernels, Mode, SequenceClassifier};
use rand::{Rng, SeedableRng};
use training::{Optimizer, OptimizerKind};

use crate::models;

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
    device: String,
    /// Frozen weights: auto, f32, bf16 or f16; int8 runs the f32 checks, then compares the
    /// merged model's int8 inference (CPU) with the composed f32 ops.
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Largest error allowed, relative to the reference's largest magnitude; default 1e-4 for
    /// f32 weights, 3e-2 for bf16/f16 (the kernels round at other points than composed ops).
    #[arg(long)]
    tolerance: Option<f64>,
    /// The same for int8 inference against f32. Default 0.15: this measures quantization error,
    /// not the kernels (their integer products are tested exactly); MiniLM gives 0.12, and a
    /// wrong scale or zero point gives errors of order one.
    #[arg(long, default_value_t = 0.15)]
    int8_tolerance: f64,
}

pub fn main(argv: impl Iterator<Item = OsString>) {
    let args = Args::parse_from(argv);
    pipeline::cli::run_stage("check-kernels", || run(&args));
}

/// max |a − b| / max |b| over all elements.
fn relative_error(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if a.len() != b.len() {
        bail!("{} vs {} elements", a.len(), b.len())
    }
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            if x.is_finite() {
                (x - y).abs()
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    Ok((diff, diff / scale.max(1e-30)))
}

fn run(args: &Args) -> Result<()> {
    let (device, device_name) = training::device::select_device(&args.device)?;
    let int8 = args.dtype == "int8";
    let dtype = match int8 {
        true => DType::F32,
        false => training::device::select_dtype(&args.dtype, &device)?,
    };
    let tolerance = args
        .tolerance
        .unwrap_or(if dtype == DType::F32 { 1e-4 } else { 3e-2 });
    let model = models::open(&args.model)?;
    let build = |kernels| -> Result<SequenceClassifier> {
        let mut m = SequenceClassifier::new(&model.ckpt, Some(&models::lora()), 7, &device, dtype)?;
        m.set_kernels(kernels);
        Ok(m)
    };
    let (mut tested, mut reference) = (build(Kernels::Auto)?, build(Kernels::Composed)?);
    // B starts at zero, which would leave every A gradient zero: give both models the same
    // random B so that every gradient is exercised.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for ((name, t), (_, r)) in tested.trainable().iter().zip(reference.trainable()) {
        if name.contains("lora_B") {
            let v: Vec<f32> = (0..t.elem_count())
                .map(|_| rng.random_range(-0.05..0.05))
                .collect();
            let b = Tensor::from_vec(v, t.shape(), &device)?;
            t.set(&b)?;
            r.set(&b)?;
        }
    }
    let (ids, labels) =
        models::random_batch(model.ckpt.vocab_size(), args.batch, args.seq, 3, &device)?;
    // Rows of decreasing length: padding in every position range, one full row.
    let mask: Vec<u32> = (0..args.batch)
        .flat_map(|i| {
            let len = args.seq - (i * args.seq / (2 * args.batch.max(1))).min(args.seq - 1);
            (0..args.seq).map(move |j| u32::from(j < len))
        })
        .collect();
    let mask = Tensor::from_vec(mask, (args.batch, args.seq), &device)?;

    let mut failed = Vec::new();
    let cpu_kernels = |d: DType| match (int8, d) {
        (true, _) => lora_classifier::cpu_kernels("int8"),
        (false, DType::BF16) if device.is_cpu() => lora_classifier::cpu_kernels("bf16"),
        _ => None,
    };
    let mut report = |what: &str, got: &Tensor, want: &Tensor| -> Result<()> {
        let (abs, rel) = relative_error(got, want).with_context(|| what.to_string())?;
        let tolerance = if what.contains("int8") {
            args.int8_tolerance
        } else {
            tolerance
        };
        let ok = rel <= tolerance;
        println!(
            "{}",
            serde_json::json!({
                "check": what, "model": model.name, "device": device_name,
                "dtype": models::dtype_name(dtype), "batch": args.batch, "seq": args.seq,
                "max_abs_err": abs, "rel_err": rel, "tolerance": tolerance, "ok": ok,
                "cpu_kernels": cpu_kernels(dtype),
            })
        );
        if !ok {
            failed.push(what.to_string());
        }
        Ok(())
    };

    let step =
        |m: &SequenceClassifier| -> Result<(Tensor, Tensor, candle_core::backprop::GradStore)> {
            let logits = m.forward(&ids, &mask, Mode::Train { dropout_seed: 5 })?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            let grads = loss.backward()?;
            Ok((logits, loss, grads))
        };
    let (logits, loss, grads) = step(&tested)?;
    let (ref_logits, ref_loss, ref_grads) = step(&reference)?;
    report("train logits", &logits, &ref_logits)?;
    report("loss", &loss, &ref_loss)?;
    for ((name, t), (_, r)) in tested.trainable().iter().zip(reference.trainable()) {
        let g = grads
            .get(t)
            .with_context(|| format!("no gradient for {name}"))?;
        let rg = ref_grads
            .get(&r)
            .with_context(|| format!("no reference gradient for {name}"))?;
        report(&format!("grad {name}"), g, rg)?;
    }
    // One AdamW step per implementation, from the same parameters and gradients (the
    // reference model's): the fused CUDA update against the composed ops, twice (state too).
    let copies = |kernels| -> Result<(Vec<Var>, Optimizer)> {
        let vars: Vec<Var> = reference
            .trainable()
            .iter()
            .map(|(_, v)| Var::from_tensor(&v.as_tensor().copy()?))
            .collect::<candle_core::Result<_>>()?;
        let named = reference
            .trainable()
            .into_iter()
            .map(|(n, _)| n)
            .zip(vars.clone())
            .collect();
        let mut opt = Optimizer::new(
            OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            named,
        )?;
        opt.set_kernels(kernels);
        Ok((vars, opt))
    };
    let (fused_vars, mut fused_opt) = copies(Kernels::Auto)?;
    let (composed_vars, mut composed_opt) = copies(Kernels::Composed)?;
    for _ in 0..2 {
        for (vars, opt) in [
            (&fused_vars, &mut fused_opt),
            (&composed_vars, &mut composed_opt),
        ] {
            let mut g = candle_core::backprop::GradStore::default();
            for (v, (_, r)) in vars.iter().zip(reference.trainable()) {
                let rg = ref_grads.get(&r).context("no reference gradient")?;
                g.insert(v.as_tensor(), rg.copy()?);
            }
            opt.step(&g, 5e-4)?;
        }
    }
    for ((f, c), (name, _)) in fused_vars
        .iter()
        .zip(&composed_vars)
        .zip(reference.trainable())
    {
        report(&format!("adamw x2 {name}"), f.as_tensor(), c.as_tensor())?;
    }
    tested.merge()?;
    reference.merge()?;
    let got = tested.forward(&ids, &mask, Mode::Inference)?;
    let want = reference.forward(&ids, &mask, Mode::Inference)?;
    report("merged inference logits", &got, &want)?;
    if int8 {
        // The fresh head's logits are about 1e-2, against which any quantization error is
        // large: a head with weights in ±0.5 gives logits of order one, the scale a trained
        // head's have, so the relative error says how much int8 moves a decision.
        for ((name, t), (_, r)) in tested.trainable().iter().zip(reference.trainable()) {
            if name.contains("classifier") && name.ends_with("weight") {
                let v: Vec<f32> = (0..t.elem_count())
                    .map(|_| rng.random_range(-0.5..0.5))
                    .collect();
                let w = Tensor::from_vec(v, t.shape(), &device)?;
                t.set(&w)?;
                r.set(&w)?;
            }
        }
        let want = reference.forward(&ids, &mask, Mode::Inference)?;
        tested.quantize_int8()?;
        let got = tested.forward(&ids, &mask, Mode::Inference)?;
        report("merged int8 inference logits", &got, &want)?;
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
