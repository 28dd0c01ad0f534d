//! The `predict` command line: the `predict` binary and `imdb-lora predict` parse and run it here.
//! Texts from the arguments, a file or stdin are printed; `--input`/`--output` classify a
//! parquet, JSON Lines or CSV file into another ([`batch`]).

pub mod batch;
pub mod input;
pub mod shard;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use crate::{Classifier, ModelChoice};
use anyhow::{bail, Context};
use clap::Parser;
use pipeline::predictions::ExamplePrediction;

/// Classify new texts as positive or negative.
///
/// Texts come from the arguments, from --file (one per line), or from
/// standard input (one per line). Uses this run's model and adapter unless
/// --model/--adapter name others; `--model artifacts/export` (no adapter) uses
/// the merged export.
///
/// With --input and --output, classifies a parquet, JSON Lines or CSV file a
/// chunk at a time into a parquet or JSON Lines file, optionally one shard of
/// it (--shard); see docs/batch-predict.md.
#[derive(Parser)]
#[command(name = "predict", version)]
pub struct Cli {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
    #[command(flatten)]
    choice: ModelChoice,
    #[command(flatten)]
    files: batch::FileArgs,
    /// Read texts from this file, one per line.
    #[arg(long, value_name = "PATH", conflicts_with = "texts")]
    file: Option<PathBuf>,
    /// Print one JSON object per text instead of a table: text, label and score as
    /// transformers' text-classification pipeline gives them, and prob_positive.
    #[arg(long)]
    json: bool,
    /// The texts to classify.
    texts: Vec<String>,
}

/// Parses `args` (the first is the program name, as in `std::env::args_os()`) and runs the
/// stage; prints the error and exits with status 1 on failure.
pub fn main<I, T>(args: I)
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Cli::parse_from(args);
    pipeline::cli::run_stage("predict", || {
        let Some(config) = args.common.load()? else {
            return Ok(());
        };
        if args.files.input.is_some() {
            let s = batch::run(&config, &args.choice, &args.files)?;
            let what = if s.shard == shard::Shard::ALL {
                format!("{} reviews", s.rows)
            } else {
                format!("{} of {} reviews (shard {})", s.rows, s.input_rows, s.shard)
            };
            let cut = match s.truncated {
                0 => String::new(),
                n => format!("; {n} longer than model.max_len tokens, cut"),
            };
            println!(
                "predict: {what} → {} in {:.1} s ({:.1} reviews/s){cut}",
                s.output.display(),
                s.seconds,
                s.rows as f64 / s.seconds.max(1e-9)
            );
            return Ok(());
        }
        let texts: Vec<String> = if !args.texts.is_empty() {
            args.texts.clone()
        } else if let Some(path) = &args.file {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .lines()
                .map(str::to_string)
                .collect()
        } else if !std::io::stdin().is_terminal() {
            std::io::stdin().lock().lines().collect::<Result<_, _>>()?
        } else {
            bail!("no texts given: pass them as arguments, with --file PATH, or on standard input");
        };
        if texts.is_empty() {
            bail!("no texts given (the input was empty): pass them as arguments, with --file PATH, or on standard input");
        }
        let texts: Vec<String> = texts.into_iter().filter(|t| !t.trim().is_empty()).collect();
        if texts.is_empty() {
            bail!("the input holds no text to classify (only blank lines)");
        }
        let choice = args.choice.clone();
        let classifier = Classifier::load(&config, &choice)?;
        // On stderr: stdout holds only the predictions (a table or JSON lines).
        eprintln!("predict: runs on {}", classifier.runs_on());
        let encoder = crate::encoder_for(&config, args.choice.model.as_deref())?;
        let probs = classifier.classify_texts(&encoder, &texts, config.evaluate.batch_size)?;
        for (text, p) in texts.iter().zip(probs) {
            let pred = ExamplePrediction::new(text, p, config.evaluate.threshold);
            if args.json {
                let line = JsonLine::new(text, p, config.evaluate.threshold);
                println!("{}", serde_json::to_string(&line)?);
            } else {
                // Texts may hold escape and bidi control characters: print them inert.
                let text = pipeline::cli::terminal_safe(text);
                println!("{} ({:.4})\t{text}", pred.label, pred.probability);
            }
        }
        Ok(())
    });
}

/// One `--json` line: `label` and `score` as transformers' text-classification pipeline gives
/// them for an export (the id2label name; the predicted label's probability), and P(positive).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JsonLine {
    pub text: String,
    pub label: String,
    pub score: f64,
    pub prob_positive: f64,
}

impl JsonLine {
    pub fn new(text: &str, prob_positive: f64, threshold: f64) -> Self {
        let pred = ExamplePrediction::new(text, prob_positive, threshold);
        let positive = prob_positive >= threshold;
        Self {
            text: pred.text,
            label: lora_classifier::LABELS[usize::from(positive)].to_string(),
            score: pred.probability,
            prob_positive,
        }
    }
}
