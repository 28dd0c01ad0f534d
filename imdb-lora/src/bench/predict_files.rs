//! `imdb-lora bench --predict-files 2000,200000`: `predict --input` on synthetic parquet files of
//! short reviews, run as a child process (`imdb-lora predict`) so that its peak resident memory
//! (VmHWM, polled from /proc) is its own: memory should not grow with the file. Beside it, the
//! in-process reviews/s of evaluate's path (tokenize, then `Classifier::positive_probabilities`
//! with evaluate.batch_size) on the first file's reviews, with the same model and settings,
//! after an untimed warm-up. The child's reviews/s is rows / its whole wall time (start, model
//! load, reading and writing included).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};

use super::{cpu_threads, round, Args};
use crate::models;

/// Runs the benchmark for each size in `args.predict_files`, one JSON line each, after one line
/// for evaluate's in-process throughput.
pub fn run(args: &Args) -> Result<()> {
    if args.review_words == 0 || args.chunk_rows == 0 {
        bail!("--review-words and --chunk-rows must be at least 1");
    }
    let model = models::open(&args.model)?;
    let model_dir = model.ckpt.dir().to_path_buf();
    if !model_dir.join("tokenizer.json").exists() {
        bail!(
            "--predict-files needs a model with its tokenizer (minilm, a hub id or a checkpoint \
             folder), not {}",
            model.name
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    // A fresh adapter: throughput does not depend on its values.
    let adapter = dir.join("adapter");
    lora_classifier::SequenceClassifier::new(
        &model.ckpt,
        Some(&models::lora()),
        0,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )?
    .save_adapter(&adapter)?;
    let mut config = pipeline::Config {
        artifacts: dir.join("artifacts"),
        ..Default::default()
    };
    config.model.source = model_dir.display().to_string();
    config.training.device = args.device;
    config.training.dtype = args.dtype;
    if args.int8 {
        config.evaluate.dtype = pipeline::config::EvaluateDtype::Int8;
    }
    let config_path = dir.join("pipeline.yaml");
    std::fs::write(&config_path, config.to_yaml())?;

    let (device, device_name) = inference::device::select_device(args.device)?;
    let dtype = match args.int8 {
        true => "int8",
        false => models::dtype_name(inference::device::select_dtype(args.dtype, &device)),
    };
    let line = |v: serde_json::Value| {
        let mut v = v;
        v["model"] = model.name.clone().into();
        v["device"] = device_name.clone().into();
        v["dtype"] = dtype.into();
        v["review_words"] = args.review_words.into();
        v["batch_size"] = config.evaluate.batch_size.into();
        v["threads"] = cpu_threads().into();
        println!("{v}");
    };

    let first = args.predict_files[0];
    let texts: Vec<String> = (0..first).map(|i| review(i, args.review_words)).collect();
    let (tokenize_s, infer_s, tokens) = in_process(&config, &model_dir, &adapter, &texts)?;
    line(serde_json::json!({
        "bench": "evaluate_in_process",
        "rows": first,
        "mean_tokens": round(tokens, 1),
        "tokenize_s": round(tokenize_s, 3),
        "infer_s": round(infer_s, 3),
        "reviews_per_s": round(first as f64 / infer_s, 1),
        "reviews_per_s_with_tokenize": round(first as f64 / (tokenize_s + infer_s), 1),
    }));
    drop(texts);

    for &rows in &args.predict_files {
        let input = dir.join(format!("reviews-{rows}.parquet"));
        write_reviews(&input, rows, args.review_words)?;
        let input_mb = std::fs::metadata(&input)?.len() as f64 / 1e6;
        let output = dir.join(format!("predictions-{rows}.parquet"));
        let run = run_child(
            &config_path,
            &model_dir,
            &adapter,
            &input,
            &output,
            args.chunk_rows,
            dir,
        )?;
        line(serde_json::json!({
            "bench": "predict_files",
            "rows": rows,
            "chunk_rows": args.chunk_rows,
            "input_mb": round(input_mb, 2),
            "wall_s": round(run.wall_s, 2),
            "reviews_per_s": round(rows as f64 / run.wall_s, 1),
            "peak_rss_mib": run.peak_rss_kb.map(|kb| round(kb as f64 / 1024.0, 1)),
        }));
        std::fs::remove_file(&input).ok();
        std::fs::remove_file(&output).ok();
    }
    Ok(())
}

/// A short synthetic review: between half and 1.5 times `words` words of movie-review
/// vocabulary, the same for the same `i`.
fn review(i: usize, words: usize) -> String {
    const WORDS: [&str; 32] = [
        "the",
        "film",
        "movie",
        "plot",
        "acting",
        "was",
        "really",
        "not",
        "very",
        "a",
        "bit",
        "wonderful",
        "boring",
        "superb",
        "dull",
        "moving",
        "awful",
        "cast",
        "script",
        "and",
        "great",
        "bad",
        "story",
        "characters",
        "ending",
        "director",
        "loved",
        "hated",
        "it",
        "of",
        "funny",
        "slow",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
    let n = rng.random_range(words.div_ceil(2)..=words + words / 2);
    let mut text = String::new();
    for k in 0..n {
        if k > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    text.push('.');
    text
}

/// `rows` reviews with ids as a parquet file, written a slice at a time.
fn write_reviews(path: &Path, rows: usize, words: usize) -> Result<()> {
    evaluate::predict_cli::input::write_texts_parquet(path, rows, |i| (i as i64, review(i, words)))
}

/// Tokenize and classify `texts` in this process as evaluate does; the seconds of each and the
/// mean number of attended tokens.
fn in_process(
    config: &pipeline::Config,
    model_dir: &Path,
    adapter: &Path,
    texts: &[String],
) -> Result<(f64, f64, f64)> {
    let choice = evaluate::ModelChoice {
        model: Some(model_dir.to_path_buf()),
        adapter: Some(adapter.to_path_buf()),
    };
    let classifier = evaluate::Classifier::load(config, &choice)?;
    let encoder = evaluate::encoder_for(config, Some(model_dir))?;
    // Warm-up (first-touch pages, kernel set-up), as the child's first chunk pays it: untimed.
    let warm = encoder.encode(&texts[..texts.len().min(256)])?;
    classifier.positive_probabilities(
        &warm.input_ids,
        &warm.attention_mask,
        encoder.max_len(),
        config.evaluate.batch_size,
        None,
    )?;
    let started = Instant::now();
    let encoded = encoder.encode(texts)?;
    let tokenize_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    classifier.positive_probabilities(
        &encoded.input_ids,
        &encoded.attention_mask,
        encoder.max_len(),
        config.evaluate.batch_size,
        None,
    )?;
    let infer_s = started.elapsed().as_secs_f64();
    let tokens = encoded
        .attention_mask
        .iter()
        .map(|&m| m as f64)
        .sum::<f64>()
        / texts.len() as f64;
    Ok((tokenize_s, infer_s, tokens))
}

struct ChildRun {
    wall_s: f64,
    /// VmHWM, last read before the child exited; None where /proc is not there.
    peak_rss_kb: Option<u64>,
}

/// `imdb-lora predict --input … --output …` as a child, its VmHWM polled every 20 ms.
fn run_child(
    config: &Path,
    model_dir: &Path,
    adapter: &Path,
    input: &Path,
    output: &Path,
    chunk_rows: usize,
    dir: &Path,
) -> Result<ChildRun> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let log: PathBuf = dir.join("predict.log");
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("predict")
        .arg("--config")
        .arg(config)
        .arg("--model")
        .arg(model_dir)
        .arg("--adapter")
        .arg(adapter)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--chunk-rows")
        .arg(chunk_rows.to_string())
        .arg("--log-format")
        .arg("json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting imdb-lora predict")?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(kb) = vm_hwm_kb(&status_file) {
            peak = Some(peak.unwrap_or(0).max(kb));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall_s = started.elapsed().as_secs_f64();
    if !status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("imdb-lora predict failed ({status}):\n{log}");
    }
    Ok(ChildRun {
        wall_s,
        peak_rss_kb: peak,
    })
}

/// `VmHWM` of a /proc/<pid>/status file, in kB.
fn vm_hwm_kb(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
