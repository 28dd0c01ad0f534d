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

/// Parses `args` (the first is the program name, as in `std::env::args_os()`) and runs the
/// stage; prints the error and exits with status 1 on failure.
pub fn main<I, T>(args: I)
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Cli::parse_from(args);
    pipeline::cli::run_stage("evaluate", || {
        pipeline::cli::execute(&args.common, |_| {
            Ok(crate::Evaluate::new(args.choice.clone()))
        })
    });
}
