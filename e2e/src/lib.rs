//! Test-only crate: the whole pipeline run in-process on tiny inputs (see `tests/`).
//!
//! Helpers: a tiny IMDb-like parquet source, a tiny config on the fixtures' tiny BERT,
//! the chain of stages with what each one did, and snapshots of the artifacts.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pipeline::config::{DeviceSetting, DtypeSetting, ImageFormat};
use pipeline::{Config, Layout, StageId};
use polars::prelude::*;

/// The fixture's tiny BERT checkpoint (with its classifier head and MiniLM's tokenizer).
pub fn bert_tiny() -> PathBuf {
    test_support::fixture("bert-tiny-lora/base")
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

/// `dir/{train,test}-00000-of-00001.parquet` (columns text, label), `per_split` reviews each,
/// labels alternating.
pub fn parquet_source(dir: &Path, per_split: usize) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
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
        )?;
        let file = fs::File::create(dir.join(format!("{split}-00000-of-00001.parquet")))?;
        ParquetWriter::new(file).finish(&mut df)?;
    }
    Ok(dir.to_path_buf())
}

/// A tiny run: artifacts under `artifacts`, reviews from `data` (a [`parquet_source`] of 32
/// per split: 16 train at `train_fraction` 0.5, 8 validation, 24 test), the fixture's tiny
/// BERT, 24 tokens, LoRA r=4, two epochs of batches of 4, SVG figures.
pub fn tiny_config(artifacts: &Path, data: &Path) -> Config {
    let mut c = Config {
        seed: 11,
        artifacts: artifacts.to_path_buf(),
        ..Config::default()
    };
    c.data.source = data.display().to_string();
    c.data.train_fraction = 0.5;
    c.data.validation_fraction = 0.25;
    c.model.source = bert_tiny().display().to_string();
    c.model.max_len = 24;
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.training.learning_rate = 1e-2;
    c.training.batch_size = 4;
    c.training.epochs = 2;
    c.training.checkpoint_every_steps = 3;
    c.training.device = DeviceSetting::Cpu;
    // f32, whose results the tests hold to the fixtures at 1e-5 (`auto` is bf16 on a CPU with
    // AVX512-BF16; `just smoke` runs that).
    c.training.dtype = DtypeSetting::F32;
    c.evaluate.batch_size = 16;
    c.report.formats = vec![ImageFormat::Svg];
    c
}

/// Runs every stage of the registry in order, each as `imdb-lora <stage>` does with no options
/// (as `just all` does); returns the stages that did work (the others reported up to date).
pub fn run_chain(c: &Config) -> Result<Vec<StageId>> {
    let mut did = Vec::new();
    for stage in StageId::ALL {
        if (imdb_lora::status::stage(stage).run)(c).with_context(|| stage.to_string())? {
            did.push(stage);
        }
    }
    Ok(did)
}

/// Every file under the artifacts root by relative path (`/`-separated), with its bytes.
pub fn snapshot(c: &Config) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap();
                let rel: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
                out.insert(rel.join("/"), fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&c.artifacts, &c.artifacts, &mut out);
    out
}

/// The files of one stage's folder in a [`snapshot`].
pub fn stage_files(
    snapshot: &BTreeMap<String, Vec<u8>>,
    stage: StageId,
) -> BTreeMap<String, Vec<u8>> {
    let prefix = format!("{}/", stage.dir_name());
    snapshot
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The paths that differ between two snapshots (added, removed or changed).
pub fn changed(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

pub fn stage_dir(c: &Config, stage: StageId) -> PathBuf {
    Layout::new(&c.artifacts).stage_dir(stage)
}
