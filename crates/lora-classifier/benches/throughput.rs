//! Throughput on all-MiniLM-L6-v2 (through the Hugging Face cache, as the tests find it): LoRA r=8, alpha=32 on
//! query,value; batch 16 × 128 random tokens, full mask, f32, CPU.
//!
//! `cargo bench -p lora-classifier --bench throughput` (the bench profile is the release one)
//! prints one JSON line per bench; `benches/torch_reference.py` is the PyTorch + PEFT reference.
//! Set STEPS to change the number of timed steps (default 10, after 2 warm-up steps), ONLY to
//! `inference` or `train_step` to run one of them (for profiling).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use lora_classifier::{Checkpoint, LoraBias, LoraSettings, Mode, SequenceClassifier};
use rand::{Rng, SeedableRng};

const BATCH: usize = 16;
const SEQ: usize = 128;

fn minilm_dir() -> Result<PathBuf> {
    test_support::real_model(test_support::MINILM, true).map_err(anyhow::Error::msg)
}

/// This process's user + system CPU time (Linux), to tell our cost from other load on the machine.
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

/// (samples per second, CPU seconds per step) over `steps` steps after 2 warm-up steps.
fn time(steps: usize, mut f: impl FnMut(u64) -> Result<()>) -> Result<(f64, f64)> {
    for i in 0..2 {
        f(i)?;
    }
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for i in 0..steps {
        f(100 + i as u64)?;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok((
        (steps * BATCH) as f64 / wall,
        (cpu_seconds() - cpu) / steps as f64,
    ))
}

fn report(bench: &str, samples_per_s: f64, cpu_s_per_step: f64, threads: usize) {
    println!(
        r#"{{"bench":"{bench}","samples_per_s":{samples_per_s:.2},"cpu_s_per_step":{cpu_s_per_step:.3},"batch":{BATCH},"seq":{SEQ},"threads":{threads}}}"#
    );
}

fn main() -> Result<()> {
    lora_classifier::tune_cpu_runtime();
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let only = std::env::var("ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;
    let ckpt = Checkpoint::open(&minilm_dir()?)?;
    let lora = LoraSettings {
        r: 8,
        alpha: 32.0,
        dropout: 0.1,
        bias: LoraBias::None,
        target_modules: vec!["query".into(), "value".into()],
        layer_norm: false,
        use_rslora: false,
    };
    let dev = Device::Cpu;
    let mut model = SequenceClassifier::new(&ckpt, Some(&lora), 0, &dev, DType::F32)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..BATCH * SEQ)
        .map(|_| rng.random_range(1000..ckpt.vocab_size() as u32))
        .collect();
    let ids = Tensor::from_vec(ids, (BATCH, SEQ), &dev)?;
    let mask = Tensor::ones((BATCH, SEQ), DType::U32, &dev)?;
    let labels: Vec<u32> = (0..BATCH).map(|_| rng.random_range(0..2)).collect();
    let labels = Tensor::from_vec(labels, BATCH, &dev)?;
    let threads = rayon::current_num_threads();

    let vars = model.trainable();
    let train_step = |step| -> Result<()> {
        let logits = model.forward(&ids, &mask, Mode::Train { dropout_seed: step })?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let grads = loss.backward()?;
        for (_, v) in &vars {
            let g = grads.get(v).context("no gradient")?;
            v.set(&(v.as_tensor() - (g * 1e-3)?)?)?;
        }
        Ok(())
    };
    let train = if run("train_step") {
        Some(time(steps, train_step)?)
    } else {
        None
    };

    model.merge()?;
    if run("inference") {
        let (infer, cpu) = time(steps, |_| {
            model.forward(&ids, &mask, Mode::Inference)?;
            Ok(())
        })?;
        report("inference", infer, cpu, threads);
    }
    if let Some((train, cpu)) = train {
        report("train_step", train, cpu, threads);
    }
    Ok(())
}
