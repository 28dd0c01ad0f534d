//! The `evaluate` command line: the `evaluate` binary and `imdb-lora evaluate` parse and run it here.

use crate::ModelChoice;
use clap::Parser;

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
