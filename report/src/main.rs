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
struct Args {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
}

fn main() {
    let args = Args::parse();
    pipeline::cli::run_stage("report", || {
        let Some(config) = args.common.load()? else {
            return Ok(());
        };
        match report::stage::run(&config, args.common.force)? {
            None => println!(
                "report: up to date ({})",
                config.artifacts.join("report").display()
            ),
            Some(dir) => println!("report: wrote {}", dir.join("report.html").display()),
        }
        Ok(())
    });
}
