use clap::Parser;
use evaluate::{ModelChoice, Outcome};

/// Evaluate the fine-tuned classifier on the test split.
///
/// Loads the base model and the LoRA adapter (merged for speed), classifies
/// the test split (and the validation split with `evaluate.validation`), and
/// writes artifacts/evaluate/: predictions.parquet, metrics.json
/// (classification report, confusion matrix, ROC-AUC and ROC curve, as
/// scikit-learn computes them), classification_report.txt and examples.json.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
    #[command(flatten)]
    choice: ModelChoice,
}

fn main() {
    // Before any thread starts: allocator and thread-pool settings for the CPU kernels.
    lora_classifier::tune_cpu_runtime();
    let args = Args::parse();
    pipeline::cli::run_stage("evaluate", || {
        let Some(config) = args.common.load()? else {
            return Ok(());
        };
        let choice = args.choice.clone();
        match evaluate::run(&config, &choice, args.common.force)? {
            Outcome::UpToDate(dir) => println!("evaluate: up to date ({})", dir.display()),
            Outcome::Evaluated {
                dir,
                metrics,
                reviews_per_s,
            } => println!(
                "evaluate: accuracy {:.4}, ROC-AUC {}, {reviews_per_s:.1} reviews/s → {}",
                metrics.accuracy,
                metrics.roc_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
                dir.display()
            ),
        }
        Ok(())
    });
}
