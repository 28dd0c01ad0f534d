//! The report stage: gathers the artifacts of the earlier stages into
//! [`ReportInputs`] and renders them into artifacts/report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pipeline::atomic::StagingDir;
use pipeline::config::ImageFormatSetting;
use pipeline::data::{DataSummary, SplitSummary};
use pipeline::history;
use pipeline::predictions::{self, ExamplePrediction, Predictions};
use pipeline::stamp::{Freshness, StageRun};
use pipeline::train_summary::TrainSummary;
use pipeline::{Config, Layout, StageId};

use crate::{ImageFormat, ReportInputs};

/// A config enum as pipeline.yaml spells it.
fn yaml_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not what this program wrote", path.display()))
}

/// Runs the stage; `None` when it was up to date.
pub fn run(config: &Config, force: bool) -> Result<Option<PathBuf>> {
    let layout = Layout::new(&config.artifacts);
    let mut stage = StageRun::new(&layout, StageId::Report, config);
    stage.upstream(
        &layout,
        config,
        StageId::DataPrep,
        &[pipeline::data::SUMMARY_FILE],
    )?;
    stage.upstream(
        &layout,
        config,
        StageId::Train,
        &[history::HISTORY_FILE, pipeline::train_summary::SUMMARY_FILE],
    )?;
    stage.upstream(
        &layout,
        config,
        StageId::Evaluate,
        &[
            predictions::METRICS_FILE,
            predictions::PREDICTIONS_FILE,
            predictions::EXAMPLES_FILE,
        ],
    )?;
    if !force && stage.freshness()? == Freshness::UpToDate {
        return Ok(None);
    }
    let inputs = gather(config, &layout)?;
    let staged = StagingDir::new(&stage.dir)?;
    crate::render(&inputs, staged.path())?;
    stage.write_stamp(staged.path())?;
    Ok(Some(staged.commit()?))
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
        ("model", config.model.source.clone()),
        ("max_len", config.model.max_len.to_string()),
        (
            "LoRA",
            format!(
                "r={} alpha={} dropout={} bias={} targets={}",
                l.r,
                l.alpha,
                l.dropout,
                yaml_name(&l.bias),
                l.target_modules
                    .as_ref()
                    .map_or("default".into(), |t| t.join(","))
            ),
        ),
        (
            "optimizer",
            format!(
                "{} lr={} weight_decay={} batch={} epochs={}",
                yaml_name(&t.optimizer),
                t.learning_rate,
                t.weight_decay,
                t.batch_size,
                t.epochs
            ),
        ),
        (
            "scheduler",
            format!(
                "{} (warmup {} steps / ratio {})",
                yaml_name(&t.scheduler),
                t.warmup_steps,
                t.warmup_ratio
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
            format!("{} ({})", data.source, data.source_kind),
        ),
        split("train", &data.train),
        split("validation", &data.validation),
        split("test", &data.test),
    ];
    let training = kv(vec![
        ("parameters", train.parameters_line.clone()),
        (
            "device / dtype",
            format!(
                "{} / {} ({} threads)",
                train.device, train.dtype, train.threads
            ),
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
        config_yaml: config.to_yaml(),
        examples: examples
            .into_iter()
            .map(|e| (e.text, e.label, e.prob_positive))
            .collect(),
        formats: config
            .report
            .formats
            .iter()
            .map(|f| match f {
                ImageFormatSetting::Png => ImageFormat::Png,
                ImageFormatSetting::Svg => ImageFormat::Svg,
            })
            .collect(),
    })
}
