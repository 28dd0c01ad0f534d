//! `imdb-lora bench`: training-step and inference throughput of a model + LoRA, as JSON lines.
//!
//! The training step is the train stage's: forward with dropout, cross-entropy, backward, and
//! the AdamW update of `training`; inference is the merged model without autograd, as evaluate
//! runs it. Random token ids with a full mask (the time does not depend on the ids).
//! `--predict-files` measures `predict --input` on files instead ([`predict_files`]).

mod predict_files;

use std::ffi::OsString;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Parser;
use inference::device::DtypeSetting;
use lora_classifier::{Kernels, Mode, SequenceClassifier};
use training::{Optimizer, OptimizerSettings};

use crate::models;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Training-step and inference throughput, one JSON line per benchmark",
    long_about = "Training-step and inference throughput of a model with LoRA (r 8, alpha 32, \
        dropout 0.1 on query and value, as pipeline.yaml's defaults), one JSON line per \
        benchmark. The training step is the train stage's (forward with dropout, loss, backward, \
        AdamW); inference is the merged model without autograd, as evaluate runs it. \
        `python scripts/torch_bench.py` measures the same steps in PyTorch + PEFT."
)]
struct Args {
    /// minilm (all-MiniLM-L6-v2 from the HF cache); minilm-shape, bert-base or bert-large (random
    /// weights: throughput does not depend on them); a hub model id or a checkpoint folder.
    #[arg(long, default_value = "minilm")]
    model: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: inference::device::DeviceSetting,
    /// Frozen weights: auto (bf16 on a GPU and on a CPU with AVX512-BF16, else f32), f32, bf16
    /// or f16.
    #[arg(long, default_value = "auto")]
    dtype: inference::device::DtypeSetting,
    /// Inference with the merged model's frozen weights in int8 (CPU; as evaluate's
    /// `evaluate.dtype: int8`, the f32 weights quantized): no training step.
    #[arg(long)]
    int8: bool,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps of each benchmark (after the warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Run only this benchmark: train_step or inference (for profiling).
    #[arg(long)]
    only: Option<String>,
    /// composed: force the composed candle ops (the reference) instead of the fused kernels.
    #[arg(long, default_value = "auto")]
    kernels: String,
    /// The training step's backward pass: auto (the hand-written one where the model has it,
    /// with the kernels, as train runs it; else autograd) or autograd (candle's, the
    /// reference).
    #[arg(long, default_value = "auto", value_parser = ["auto", "autograd"])]
    backward: String,
    /// Instead of the step benchmarks: `predict --input` (a child process) on synthetic parquet
    /// files of this many short reviews each, e.g. 2000,200000: its peak RSS and reviews/s,
    /// beside evaluate's in-process reviews/s on the first size's reviews. --device, --dtype and
    /// --int8 apply; evaluate.batch_size is the pipeline's default.
    #[arg(long, value_delimiter = ',', value_name = "ROWS,...")]
    predict_files: Vec<usize>,
    /// Words per synthetic review of --predict-files (each has half to 1.5 times this many).
    #[arg(long, default_value_t = 16)]
    review_words: usize,
    /// predict's --chunk-rows for --predict-files.
    #[arg(long, default_value_t = 4096)]
    chunk_rows: usize,
}

pub fn main(argv: impl Iterator<Item = OsString>) {
    let args = Args::parse_from(argv);
    pipeline::cli::run_stage("bench", || run(&args));
}

/// This process's user + system CPU seconds (Linux), to tell our cost from other load.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Timing {
    samples_per_s: f64,
    ms_per_step: f64,
    cpu_s_per_step: f64,
}

/// Times `steps` calls of `f` after `warmup` calls; `f` ends with the device synchronised.
fn time(args: &Args, mut f: impl FnMut(u64) -> Result<()>) -> Result<Timing> {
    for i in 0..args.warmup {
        f(i as u64)?;
    }
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for i in 0..args.steps {
        f(1000 + i as u64)?;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(Timing {
        samples_per_s: (args.steps * args.batch) as f64 / wall,
        ms_per_step: 1e3 * wall / args.steps as f64,
        cpu_s_per_step: (cpu_seconds() - cpu) / args.steps as f64,
    })
}

fn run(args: &Args) -> Result<()> {
    if !args.predict_files.is_empty() {
        return predict_files::run(args);
    }
    if args.steps == 0 || args.batch == 0 || args.seq == 0 {
        bail!("--steps, --batch and --seq must be at least 1")
    }
    let kernels = match args.kernels.as_str() {
        "auto" => Kernels::Auto,
        "composed" => Kernels::Composed,
        other => bail!("--kernels {other:?}: expected auto or composed"),
    };
    let (device, device_name) = inference::device::select_device(args.device)?;
    // int8 quantizes f32 weights, whatever `auto` would pick.
    let dtype = match args.dtype {
        DtypeSetting::Auto if args.int8 => DType::F32,
        setting => inference::device::select_dtype(setting, &device),
    };
    if args.int8 && (dtype != DType::F32 || !device.is_cpu()) {
        bail!("--int8 quantizes f32 weights on the CPU: use --device cpu and --dtype f32 or auto")
    }
    let model = models::open(&args.model)?;
    let mut classifier =
        SequenceClassifier::new(&model.ckpt, Some(&models::lora()), 0, &device, dtype)?;
    classifier.set_kernels(kernels);
    let (ids, labels) =
        models::random_batch(model.ckpt.vocab_size(), args.batch, args.seq, 0, &device)?;
    let mask = Tensor::ones((args.batch, args.seq), DType::U32, &device)?;
    let run = |name: &str| args.only.as_deref().is_none_or(|o| o == name);
    let runs_on = lora_classifier::runs_on(
        &device,
        if args.int8 {
            lora_classifier::FrozenWeights::Int8
        } else {
            lora_classifier::FrozenWeights::Float(dtype)
        },
        kernels,
    );
    let line = |bench: &str, t: &Timing, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "bench": bench, "model": model.name, "device": device_name,
            "dtype": if args.int8 { "int8" } else { models::dtype_name(dtype) },
            "kernels": args.kernels,
            "runs_on": runs_on,
            "batch": args.batch, "seq": args.seq, "steps": args.steps,
            "samples_per_s": round(t.samples_per_s, 2), "ms_per_step": round(t.ms_per_step, 3),
        });
        if device.is_cpu() {
            v["cpu_s_per_step"] = round(t.cpu_s_per_step, 3).into();
            v["threads"] = cpu_threads().into();
            // Which code ran the low-precision layers: AVX-512 microkernels or the fallback.
            let precision = if args.int8 {
                "int8"
            } else {
                models::dtype_name(dtype)
            };
            if let Some(k) = lora_classifier::cpu_kernels(precision) {
                v["cpu_kernels"] = k.into();
            }
        }
        if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        println!("{v}");
    };

    if run("train_step") && !args.int8 {
        let mut optimizer = Optimizer::new(
            OptimizerSettings::adamw(0.9, 0.999, 1e-8, 0.01),
            classifier.trainable(),
        )?;
        // Where a step's time goes: forward + loss, backward, optimizer, each ended by a
        // device synchronisation (the timed steps synchronise once, on the loss, as train does).
        let mut phases = [0f64; 3];
        let hand_written = args.backward == "auto" && classifier.train_grads_apply();
        let mut step = |seed: u64, phases: Option<&mut [f64; 3]>| -> Result<()> {
            let t0 = Instant::now();
            // The hand-written pass computes the loss and the gradients in one call: its time
            // is the forward phase's, the backward phase's only the wait for the device.
            let (t1, grads) = if hand_written {
                let g = classifier
                    .train_grads(&ids, &mask, &labels, seed, 1.0)?
                    .context("the hand-written backward pass stopped applying")?;
                g.loss.to_scalar::<f32>()?;
                (Instant::now(), g.into_grad_store())
            } else {
                let mode = Mode::Train { dropout_seed: seed };
                let logits = classifier.forward(&ids, &mask, mode)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
                loss.to_scalar::<f32>()?;
                let t1 = Instant::now();
                (t1, loss.backward()?)
            };
            if phases.is_some() {
                device.synchronize()?;
            }
            let t2 = Instant::now();
            optimizer.step(&grads, 5e-4)?;
            device.synchronize()?;
            if let Some(p) = phases {
                p[0] += (t1 - t0).as_secs_f64();
                p[1] += (t2 - t1).as_secs_f64();
                p[2] += t2.elapsed().as_secs_f64();
            }
            Ok(())
        };
        let t = time(args, |seed| step(seed, None))?;
        for i in 0..args.steps {
            step(2000 + i as u64, Some(&mut phases))?;
        }
        let ms = |s: f64| round(1e3 * s / args.steps as f64, 3);
        line(
            "train_step",
            &t,
            match hand_written {
                true => serde_json::json!({
                    "backward": "hand-written",
                    "forward_backward_ms": ms(phases[0] + phases[1]),
                    "optimizer_ms": ms(phases[2]),
                }),
                false => serde_json::json!({
                    "backward": "autograd",
                    "forward_ms": ms(phases[0]), "backward_ms": ms(phases[1]),
                    "optimizer_ms": ms(phases[2]),
                }),
            },
        );
    }
    if run("inference") {
        classifier.merge()?;
        if args.int8 {
            classifier.quantize_int8()?;
        }
        let t = time(args, |_| {
            let logits = classifier.forward(&ids, &mask, Mode::Inference)?;
            logits.to_vec2::<f32>()?;
            Ok(())
        })?;
        line("inference", &t, serde_json::json!({}));
    }
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The CPU threads the kernels use (rayon's pool: one per core unless RAYON_NUM_THREADS).
fn cpu_threads() -> usize {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
