//! Throughput of the MiniLM tokenizer, padded to 128, on 20,000 real IMDb
//! test reviews: `cargo bench -p tokenize` prints one JSON line. Also times
//! tokenizing every review whole (no prefix shortcut) and checks that both
//! give the same ids. Uses HF_HOME, else ../shared/hf-home beside the project.

use std::time::Instant;

use pipeline::encode::{Encoded, TextEncoder};
use polars::prelude::*;

const REVIEWS: usize = 20_000;
const MAX_LEN: usize = 128;
const RUNS: usize = 3;

/// Median seconds of `RUNS` runs, and the last output.
fn time(encoder: &TextEncoder, texts: &[&str]) -> anyhow::Result<(f64, Encoded)> {
    encoder.encode(&texts[..1000])?; // warm up the thread pool and caches
    let mut seconds = Vec::new();
    let mut out = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        out = Some(std::hint::black_box(encoder.encode(texts)?));
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok((seconds[RUNS / 2], out.unwrap()))
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("HF_HOME").is_none() {
        // Before any thread exists, so setting the environment is safe.
        std::env::set_var(
            "HF_HOME",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/hf-home"),
        );
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let file = pipeline::hub::dataset_file(
        "stanfordnlp/imdb",
        "main",
        "plain_text/test-00000-of-00001.parquet",
    )?;
    let df = ParquetReader::new(std::fs::File::open(&file)?).finish()?;
    let texts: Vec<&str> = df
        .column("text")?
        .str()?
        .iter()
        .take(REVIEWS)
        .map(Option::unwrap_or_default)
        .collect();
    let model = pipeline::hub::model_dir(
        "sentence-transformers/all-MiniLM-L6-v2",
        "main",
        false,
        true,
    )?;

    let (seconds, fast) = time(&tokenize::encoder(&model, MAX_LEN)?, &texts)?;
    let whole = tokenize::encoder(&model, MAX_LEN)?.with_prefix_cut(false);
    let (whole_seconds, exact) = time(&whole, &texts)?;
    assert_eq!(fast, exact, "the prefix shortcut changed some ids");
    let per_s = |s: f64| (texts.len() as f64 / s).round();
    println!(
        "{}",
        serde_json::json!({
            "bench": "tokenize",
            "reviews": texts.len(),
            "max_len": MAX_LEN,
            "threads": rayon::current_num_threads(),
            "seconds": seconds,
            "reviews_per_s": per_s(seconds),
            "whole_text_reviews_per_s": per_s(whole_seconds),
            "truncated_share": fast.truncated as f64 / texts.len() as f64,
        })
    );
    Ok(())
}
