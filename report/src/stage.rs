//! The report stage: gathers the artifacts of the earlier stages into
//! [`ReportInputs`] and renders them into artifacts/report.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use common::json::read_json;
use pipeline::data::{DataSummary, SplitSummary};
use pipeline::history;
use pipeline::predictions::{self, ExamplePrediction, Predictions};
use pipeline::runner::{self, Context, Inputs, Outcome, Recorded, Stage, StageInputs};
use pipeline::train_summary::TrainSummary;
use pipeline::{Config, Layout, StageId};

use crate::ReportInputs;

/// A hub source with the revision asked for and the commit it resolved to ("org/name @ main =
/// 1a2b3c…"), so that a result names exactly what it was made from; a local one as it is.
fn pinned(source: &str, revision: &str, commit: &Option<String>) -> String {
    match commit {
        Some(commit) => format!("{source} @ {revision} = {commit}"),
        None => source.to_string(),
    }
}

/// The source identity of this stage's code (its build script computes it).
pub const CODE: &str = env!("STAGE_IDENTITY");

/// The stage: everything it reads is an upstream artifact.
#[derive(Default)]
pub struct Report;

impl StageInputs for Report {
    fn id(&self) -> StageId {
        StageId::Report
    }

    fn code(&self) -> &'static str {
        CODE
    }

    fn inputs(&mut self, _: &Context) -> Result<Inputs> {
        Ok(Inputs::default())
    }
}

impl Stage for Report {
    /// The files written, figures first.
    type Summary = Vec<PathBuf>;

    fn run(&mut self, ctx: &Context, _: &Recorded, out: &Path) -> Result<Vec<PathBuf>> {
        let inputs = gather(ctx.config, &ctx.layout)?;
        crate::render(&inputs, out)
    }

    fn describe(&self, written: &Vec<PathBuf>) -> Vec<String> {
        vec![format!("{} files", written.len())]
    }
}

/// Runs the stage.
pub fn run(config: &Config, force: bool) -> Result<Outcome<Vec<PathBuf>>> {
    runner::execute(&mut Report, config, force)
}

fn gather(config: &Config, layout: &Layout) -> Result<ReportInputs> {
    let data_dir = layout.stage_dir(StageId::DataPrep);
    let train_dir = layout.stage_dir(StageId::Train);
    let eval_dir = layout.stage_dir(StageId::Evaluate);
    let data: DataSummary = read_json(&data_dir.join(pipeline::data::SUMMARY_FILE))?;
    let train: TrainSummary = read_json(&train_dir.join(pipeline::train_summary::SUMMARY_FILE))?;
    let metrics: metrics::Metrics = read_json(&eval_dir.join(predictions::METRICS_FILE))?;
    let preds = Predictions::read_parquet(&eval_dir.join(predictions::PREDICTIONS_FILE))?;
    let examples: Vec<ExamplePrediction> = read_json(&eval_dir.join(predictions::EXAMPLES_FILE))?;
    let history = history::read_parquet(&train_dir.join(history::HISTORY_FILE))?;

    let kv = |pairs: Vec<(&str, String)>| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Vec<_>>()
    };
    let t = &config.training;
    let l = &config.lora;
    let run = kv(vec![
        ("seed", config.seed.to_string()),
        (
            "model",
            pinned(
                &config.model.source,
                &train.model_revision,
                &train.model_commit,
            ),
        ),
        ("max_len", config.model.max_len.to_string()),
        (
            "LoRA",
            format!(
                "r={} alpha={} dropout={} bias={} targets={}",
                l.r,
                l.alpha,
                l.dropout,
                l.bias,
                l.target_modules
                    .as_ref()
                    .map_or("default".into(), |t| t.join(","))
            ),
        ),
        (
            "optimizer",
            format!(
                "{} lr={} weight_decay={} batch={} epochs={}",
                t.optimizer, t.learning_rate, t.weight_decay, t.batch_size, t.epochs
            ),
        ),
        (
            "scheduler",
            format!(
                "{} (warmup {} steps / ratio {})",
                t.scheduler, t.warmup_steps, t.warmup_ratio
            ),
        ),
    ]);
    let split = |name: &str, s: &SplitSummary| {
        (
            name.to_string(),
            format!(
                "{} reviews, {:.1}% positive",
                s.count,
                100.0 * s.positive_share
            ),
        )
    };
    let data_table = vec![
        (
            "source".to_string(),
            format!(
                "{} ({})",
                pinned(&data.source, &data.revision, &data.resolved_commit),
                data.source_kind
            ),
        ),
        split("train", &data.train),
        split("validation", &data.validation),
        split("test", &data.test),
    ];
    let training = kv(vec![
        ("parameters", train.parameters_line.clone()),
        (
            "runs on",
            if train.runs_on.is_empty() {
                format!(
                    "{} / {} ({} threads)",
                    train.device, train.dtype, train.threads
                )
            } else {
                format!("{} ({} threads)", train.runs_on, train.threads)
            },
        ),
        ("wall time", format!("{:.1} s", train.wall_time_s)),
        (
            "throughput",
            format!("{:.2} samples/s", train.samples_per_s),
        ),
        (
            "steps",
            format!("{} over {} epochs", train.steps, train.epochs),
        ),
        (
            "adapter kept",
            format!("{} (epoch {})", train.kept, train.adapter_epoch),
        ),
        (
            "best validation",
            format!(
                "loss {:.4}, accuracy {:.4} (epoch {})",
                train.best_val_loss, train.best_val_accuracy, train.best_epoch
            ),
        ),
    ]);
    let cm = &metrics.confusion_matrix;
    let test = kv(vec![
        ("reviews", metrics.n_samples.to_string()),
        ("accuracy", format!("{:.4}", metrics.accuracy)),
        (
            "ROC-AUC",
            metrics
                .roc_auc
                .map_or("undefined (one class)".into(), |a| format!("{a:.4}")),
        ),
        ("threshold", metrics.threshold.to_string()),
        (
            "confusion (TN, FP, FN, TP)",
            format!("{}, {}, {}, {}", cm.tn, cm.fp, cm.fn_, cm.tp),
        ),
    ]);
    Ok(ReportInputs {
        history,
        metrics,
        labels: preds.labels,
        prob_positive: preds.prob_positive,
        tables: vec![
            ("Run".into(), run),
            ("Data".into(), data_table),
            ("Training".into(), training),
            ("Test split".into(), test),
        ],
        // The settings the stages' outputs depend on (not where they went or ran).
        config_yaml: serde_norway::to_string(&pipeline::graph::keyed_config(config))
            .context("the config as YAML")?,
        examples: examples
            .into_iter()
            .map(|e| (e.text, e.label, e.prob_positive))
            .collect(),
        formats: config.report.formats.clone(),
    })
}
