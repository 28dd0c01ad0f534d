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

/// Parses `args` (the first is the program name, as in `std::env::args_os()`) and runs the
/// stage; prints the error and exits with status 1 on failure.
pub fn main<I, T>(args: I)
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Cli::parse_from(args);
    pipeline::cli::run_stage("report", || {
        pipeline::cli::execute(&args.common, |_| Ok(crate::stage::Report))
    });
}
