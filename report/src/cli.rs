//! The `report` command line: the `report` binary and `imdb-lora report` parse and run it here.

use clap::Parser;

/// Render the report: figures (PNG/SVG), report.html and report.md.
///
/// Reads the training history and summary, the evaluation metrics,
/// predictions and example predictions, and the data summary, and writes
/// artifacts/report/: loss curves, validation accuracy, ROC curve, confusion
/// matrix, probability histograms, a self-contained report.html (figures
/// embedded, no network) and report.md.
#[derive(Parser)]
#[command(version)]
pub struct Cli {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
}

/// Parses `args` (the first is the program name) and runs the stage; exits with status 1 on failure.
pub fn main(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) {
    pipeline::cli::stage_main(
        "report",
        args,
        |cli: &Cli| &cli.common,
        |_| crate::stage::Report,
    );
}
