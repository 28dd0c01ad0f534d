//! The `evaluate` command line: the `evaluate` binary and `imdb-lora evaluate` parse and run it here.

use crate::{BatchDone, ModelChoice};
use clap::Parser;
use pipeline::cli::Progress;

/// Evaluate the fine-tuned classifier on the test split.
///
/// Loads the base model and the LoRA adapter (merged for speed), classifies
/// the test split (and the validation split with `evaluate.validation`), and
/// writes artifacts/evaluate/: predictions.parquet, metrics.json
/// (classification report, confusion matrix, ROC-AUC and ROC curve, as
/// scikit-learn computes them), classification_report.txt and examples.json.
#[derive(Parser)]
#[command(version)]
pub struct Cli {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
    #[command(flatten)]
    choice: ModelChoice,
}

/// Parses `args` (the first is the program name) and runs the stage; exits with status 1 on failure.
pub fn main(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) {
    pipeline::cli::stage_main(
        "evaluate",
        args,
        |cli: &Cli| &cli.common,
        |cli| crate::Evaluate::new(cli.choice.clone()),
    );
}

/// What the evaluate stage and `predict --input` pass as `positive_probabilities`' `on_batch`:
/// each batch advances `progress`, with the reviews per second so far.
pub(crate) fn show_batches(progress: &mut Progress) -> impl FnMut(&BatchDone) + '_ {
    move |batch: &BatchDone| {
        progress.advance(batch.rows as u64, &format!("{:.1} reviews/s", batch.rate()))
    }
}
