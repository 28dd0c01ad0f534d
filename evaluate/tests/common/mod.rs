//! Shared helpers: the repository's fixtures, a tiny IMDb-like parquet source, a tiny config on the
//! fixture's tiny BERT, and the upstream stages run in-process.
#![allow(dead_code)] // each test binary uses its own share of the helpers

use std::fs;
use std::path::{Path, PathBuf};

use pipeline::config::ImageFormat;
use pipeline::{Config, Layout, StageId};
use polars::prelude::*;

/// `fixtures/{name}`, canonical (the stamp and error messages show it).
pub use test_support::fixture;

pub fn bert_base() -> PathBuf {
    fixture("bert-tiny-lora/base")
}

pub fn bert_adapter() -> PathBuf {
    fixture("bert-tiny-lora/adapter")
}

pub fn gpt2_base() -> PathBuf {
    fixture("gpt2-tiny-lora/base")
}

pub fn gpt2_adapter() -> PathBuf {
    fixture("gpt2-tiny-lora/adapter")
}

/// A fixture's texts (expected.json) and P(positive) = softmax(lora_logits)[:, 1], as
/// transformers + PEFT computed them (expected.safetensors).
pub fn fixture_probabilities(name: &str) -> (Vec<String>, Vec<f64>) {
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture(name).join("expected.json")).unwrap())
            .unwrap();
    let texts: Vec<String> = serde_json::from_value(json["texts"].clone()).unwrap();
    let probs = fixture_positive_probabilities(name, "lora_logits");
    assert_eq!(texts.len(), probs.len(), "{name}: texts and logits");
    (texts, probs)
}

/// softmax(`key`)[:, 1] of the fixture's expected tensors (`lora_logits`, `base_logits`).
pub fn fixture_positive_probabilities(name: &str, key: &str) -> Vec<f64> {
    let tensors = candle_core::safetensors::load(
        fixture(name).join("expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let logits: Vec<Vec<f32>> = tensors[key].to_vec2().unwrap();
    logits
        .iter()
        .map(|l| {
            let (a, b) = (l[0] as f64, l[1] as f64);
            let m = a.max(b);
            (b - m).exp() / ((a - m).exp() + (b - m).exp())
        })
        .collect()
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A review whose words carry its label, varied by `i` so that no two are alike.
pub fn review(split: &str, i: usize, label: u8) -> String {
    const GOOD: [&str; 5] = ["wonderful", "superb", "moving", "brilliant", "delightful"];
    const BAD: [&str; 5] = ["awful", "boring", "dull", "wooden", "predictable"];
    let words = if label == 1 { GOOD } else { BAD };
    let mut text = format!("{split} review {i}: a");
    for k in 0..(2 + i % 5) {
        text.push(' ');
        text.push_str(words[(i + 3 * k) % words.len()]);
    }
    text.push_str(" film.");
    text
}

/// `dir/{train,test}-00000-of-00001.parquet` (columns text, label) with `per_split` reviews
/// each, labels alternating.
pub fn parquet_source(dir: &Path, per_split: usize) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for split in ["train", "test"] {
        let labels: Vec<i64> = (0..per_split).map(|i| (i % 2) as i64).collect();
        let texts: Vec<String> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| review(split, i, l as u8))
            .collect();
        let mut df = DataFrame::new(
            per_split,
            vec![
                Column::new("text".into(), texts),
                Column::new("label".into(), labels),
            ],
        )
        .unwrap();
        let file = fs::File::create(dir.join(format!("{split}-00000-of-00001.parquet"))).unwrap();
        ParquetWriter::new(file).finish(&mut df).unwrap();
    }
    dir.to_path_buf()
}

/// A tiny run under `root`: 32 reviews per source split (16 train, 8 validation, 24 test),
/// the fixture's tiny BERT, 24 tokens, one epoch of batches of 4.
pub fn tiny_config(root: &Path) -> Config {
    let data = parquet_source(&root.join("imdb"), 32);
    let mut c = Config {
        seed: 7,
        artifacts: root.join("artifacts"),
        ..Config::default()
    };
    c.data.source = data.display().to_string();
    c.data.train_fraction = 0.5;
    c.data.validation_fraction = 0.25;
    c.model.source = bert_base().display().to_string();
    c.model.max_len = 24;
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.training.learning_rate = 1e-2;
    c.training.batch_size = 4;
    c.training.epochs = 1;
    c.training.checkpoint_every_steps = 1000;
    c.training.device = pipeline::config::DeviceSetting::Cpu;
    // f32, whose results the tests hold to the fixtures at 1e-5 (`auto` is bf16 on a CPU with
    // AVX512-BF16; `just smoke` runs that).
    c.training.dtype = pipeline::config::DtypeSetting::F32;
    c.evaluate.batch_size = 5; // not a divisor of 24: a partial last batch
    c.report.formats = vec![ImageFormat::Svg];
    c
}

/// What predict's tests run on: the fixture's tiny BERT (24 tokens), the CPU in f32 (held to
/// the fixtures at 1e-5), artifacts under `root` (empty: predict is given --model/--adapter).
pub fn predict_config(root: &Path) -> Config {
    let mut c = Config {
        artifacts: root.join("artifacts"),
        ..Default::default()
    };
    c.model.source = bert_base().display().to_string();
    c.model.max_len = 24;
    c.training.device = pipeline::config::DeviceSetting::Cpu;
    c.training.dtype = pipeline::config::DtypeSetting::F32;
    c
}

/// Writes `c` to `root/pipeline.yaml`; its path.
pub fn write_config(root: &Path, c: &Config) -> PathBuf {
    let path = root.join("pipeline.yaml");
    std::fs::write(&path, c.to_yaml()).unwrap();
    path
}

pub fn prepare(c: &Config) {
    data_prep::run(c, false).expect("data-prep");
    tokenize::run(c, false).expect("tokenize");
}

/// data-prep, tokenize and train.
pub fn upstream(c: &Config) {
    prepare(c);
    train::run(c, false).expect("train");
}

pub fn stage_dir(c: &Config, stage: StageId) -> PathBuf {
    Layout::new(&c.artifacts).stage_dir(stage)
}

pub fn eval_err(c: &Config, choice: &evaluate::ModelChoice) -> String {
    match evaluate::run(c, choice, false) {
        Ok(_) => panic!("evaluate should have failed"),
        Err(e) => format!("{e:#}"),
    }
}
