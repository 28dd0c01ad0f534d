//! Throughput of the MiniLM tokenizer, padded to 128, on 20,000 real IMDb
//! test reviews: `cargo bench -p tokenize` prints one JSON line. Also times
//! tokenizing every review whole (no prefix shortcut) and checks that both
//! give the same ids. Finds the real data and model through the HF cache as the tests do.

use std::time::Instant;

use polars::prelude::*;
use text_encoder::{Encoded, TextEncoder};

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
    let file = test_support::real_dataset_file(test_support::IMDB, test_support::IMDB_TEST)
        .map_err(anyhow::Error::msg)?;
    let df = ParquetReader::new(std::fs::File::open(&file)?).finish()?;
    let texts: Vec<&str> = df
        .column("text")?
        .str()?
        .iter()
        .take(REVIEWS)
        .map(Option::unwrap_or_default)
        .collect();
    let model =
        test_support::real_model(test_support::MINILM, false).map_err(anyhow::Error::msg)?;

    let (seconds, fast) = time(&TextEncoder::for_model(&model, MAX_LEN)?, &texts)?;
    let whole = TextEncoder::for_model(&model, MAX_LEN)?.with_prefix_cut(false);
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
