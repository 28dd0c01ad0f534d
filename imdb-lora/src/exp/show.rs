//! `imdb-lora exp show`: the runs of an experiment in one table (the settings that differ,
//! validation and test metrics, training time) as text, Markdown or CSV, and one figure of their
//! curves (the report's drawing code).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use common::json::read_json_if_exists;
use pipeline::experiment::{Experiment, RunRecord};
use pipeline::train_summary::{TrainSummary, SUMMARY_FILE};
use pipeline::{history, predictions, Config, Layout, StageId};
use report::{ImageFormat, RunCurves};
use serde_json::Value;

use super::Place;

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub place: Place,
    /// How the table is printed.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ShowFormat,
    /// Do not write the figure (runs.png and runs.svg in the experiment's folder).
    #[arg(long)]
    pub no_plot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    /// Aligned columns.
    Text,
    /// A Markdown table.
    Md,
    /// Comma-separated values, one header line.
    Csv,
}

/// The comparison: a header and one row per run, in the order the runs were asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// What a run left, as far as it got.
struct Results {
    record: RunRecord,
    /// Its train stage has checkpoints: training began (it is running, or was stopped).
    checkpoints: bool,
    summary: Option<TrainSummary>,
    history: Vec<history::HistoryRow>,
    metrics: Option<metrics::Metrics>,
}

fn results(exp: &Experiment, record: RunRecord) -> Result<Results> {
    let layout = Layout::new(&exp.run_root(&record.name));
    let train = layout.stage_dir(StageId::Train);
    let history_file = train.join(history::HISTORY_FILE);
    let history = if history_file.exists() {
        history::read_parquet(&history_file)?
    } else {
        Vec::new()
    };
    let config: Config = serde_json::from_value(record.config.clone())
        .with_context(|| format!("run {}: its record's config", record.name))?;
    let checkpoints = Layout::new(&exp.stage_root(StageId::Train, &config))
        .train_checkpoints()
        .is_dir();
    Ok(Results {
        checkpoints,
        summary: read_json_if_exists(&train.join(SUMMARY_FILE))?,
        history,
        metrics: read_json_if_exists(
            &layout
                .stage_dir(StageId::Evaluate)
                .join(predictions::METRICS_FILE),
        )?,
        record,
    })
}

/// `{"a": {"b": 1}}` as `a.b → 1`; lists and scalars are leaves, written compactly (strings
/// without quotes).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The validation accuracy of the adapter the run kept.
fn kept_val_accuracy(s: &TrainSummary) -> f64 {
    if s.kept == "best" {
        s.best_val_accuracy
    } else {
        s.final_val_accuracy
    }
}

/// The table of `exp`'s runs and their curves, for the figure.
pub fn show(exp: &Experiment) -> Result<(Table, Vec<RunCurves>)> {
    let runs = exp
        .runs()?
        .into_iter()
        .map(|r| results(exp, r))
        .collect::<Result<Vec<_>>>()?;
    let flat: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| {
            let mut out = BTreeMap::new();
            flatten("", &r.record.config, &mut out);
            out
        })
        .collect();
    // The settings that differ between runs, and those a grid varied (even if only one ran).
    let mut keys: Vec<String> = Vec::new();
    for run in &runs {
        for (k, _) in &run.record.assignments {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    if let Some(first) = flat.first() {
        for key in first.keys() {
            if flat.iter().any(|f| f.get(key) != first.get(key)) && !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }
    let best = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, kept_val_accuracy(r.summary.as_ref()?))))
        .fold(None, |best: Option<(usize, f64)>, (i, a)| match best {
            Some((_, b)) if b >= a => best,
            _ => Some((i, a)),
        })
        .map(|(i, _)| i);
    let mut columns = vec!["#".to_string()];
    columns.extend(keys.iter().cloned());
    for c in [
        "val acc",
        "test acc",
        "AUC",
        "F1",
        "train s",
        "samples/s",
        "state",
        "run",
    ] {
        columns.push(c.to_string());
    }
    let four = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.4}"));
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (i, (run, flat)) in runs.iter().zip(&flat).enumerate() {
        let number = format!("{}{}", i + 1, if best == Some(i) { "*" } else { "" });
        let mut row = vec![number];
        row.extend(
            keys.iter()
                .map(|k| flat.get(k).cloned().unwrap_or_default()),
        );
        let s = run.summary.as_ref();
        let m = run.metrics.as_ref();
        row.push(four(s.map(kept_val_accuracy)));
        row.push(four(m.map(|m| m.accuracy)));
        row.push(four(m.and_then(|m| m.roc_auc)));
        row.push(four(m.map(|m| m.classification_report.macro_avg.f1_score)));
        // A resumed training's summary times only the part after the checkpoint.
        row.push(s.map_or("—".into(), |s| match s.resumed_from_step {
            Some(step) => format!("{:.0} (after step {step})", s.wall_time_s),
            None => format!("{:.0}", s.wall_time_s),
        }));
        row.push(s.map_or("—".into(), |s| format!("{:.1}", s.samples_per_s)));
        let state = match (s, m) {
            (_, Some(_)) => "done",
            (Some(_), None) => "trained",
            (None, None) if run.checkpoints => "training or stopped",
            _ => "not run",
        };
        row.push(state.to_string());
        row.push(run.record.name.clone());
        rows.push(row);
        curves.push(RunCurves {
            label: format!("#{}", i + 1),
            history: run.history.clone(),
        });
    }
    Ok((Table { columns, rows }, curves))
}

impl Table {
    pub fn render(&self, format: ShowFormat) -> String {
        let lines = std::iter::once(&self.columns).chain(&self.rows);
        match format {
            ShowFormat::Csv => lines
                .map(|cells| {
                    let quoted: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
                    quoted.join(",") + "\n"
                })
                .collect(),
            ShowFormat::Md => {
                let row = |cells: &[String]| {
                    let escaped: Vec<String> =
                        cells.iter().map(|c| c.replace('|', "\\|")).collect();
                    format!("| {} |\n", escaped.join(" | "))
                };
                let mut s = row(&self.columns);
                s += &format!("|{}\n", "---|".repeat(self.columns.len()));
                for r in &self.rows {
                    s += &row(r);
                }
                s
            }
            ShowFormat::Text => {
                let width = |i: usize| {
                    lines
                        .clone()
                        .map(|cells| cells[i].chars().count())
                        .max()
                        .unwrap_or(0)
                };
                let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
                std::iter::once(&self.columns)
                    .chain(&self.rows)
                    .map(|cells| {
                        let padded: Vec<String> = cells
                            .iter()
                            .zip(&widths)
                            .map(|(c, &w)| format!("{c:<w$}"))
                            .collect();
                        padded.join("  ").trim_end().to_string() + "\n"
                    })
                    .collect()
            }
        }
    }
}

fn csv_cell(cell: &str) -> String {
    if cell.contains([',', '"', '\n']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

pub(super) fn main(args: &ShowArgs) -> Result<()> {
    let exp = Experiment::open(&args.place.path()?)?;
    let (table, curves) = show(&exp)?;
    print!("{}", table.render(args.format));
    if args.format == ShowFormat::Text {
        println!("* the best validation accuracy (the only metric to choose by)");
    }
    if !args.no_plot && !curves.is_empty() {
        let written: Vec<PathBuf> =
            report::render_experiment(&curves, exp.dir(), &[ImageFormat::Png, ImageFormat::Svg])?;
        for path in written {
            eprintln!("figure: {}", path.display());
        }
    }
    Ok(())
}
