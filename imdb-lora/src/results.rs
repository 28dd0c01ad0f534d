//! `imdb-lora results`: the README's results and performance tables, printed as Markdown from
//! what the runs recorded — the stages' summaries, the training history and the metrics under
//! each artifacts folder, `timings.jsonl` there (each stage's wall and CPU time and the load
//! average around it, appended by `just all`), and the benchmarks' JSON lines (`just bench`).
//! Nothing is typed in by hand, so the README's figures can always be traced to a run.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::format::thousands;
use common::json::read_json_if_exists;
use pipeline::cli::ConfigArgs;
use pipeline::data::DataSummary;
use pipeline::history::{self, HistoryRow, RowKind};
use pipeline::train_summary::TrainSummary;
use pipeline::{Layout, StageId};
use serde_json::Value;

pub use pipeline::layout::TIMINGS_FILE;

#[derive(Parser)]
#[command(
    name = "results",
    about = "Print the results and performance tables (Markdown) from the runs' artifacts and the benchmarks' JSON lines"
)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Another run's artifacts folder, shown in a column beside the config's (repeatable).
    #[arg(long = "beside", value_name = "DIR")]
    beside: Vec<PathBuf>,
    /// JSON lines of `just bench` (imdb-lora bench, the tokenizer bench, scripts/*_bench.py).
    #[arg(long, value_name = "FILE")]
    bench: Option<PathBuf>,
}

pub fn main(argv: impl Iterator<Item = OsString>) {
    let args = Args::parse_from(argv);
    pipeline::cli::run_stage("results", || run(&args));
}

fn run(args: &Args) -> Result<()> {
    let Some(config) = args.config.load()? else {
        return Ok(());
    };
    let mut runs = vec![Run::read(&config.artifacts)?];
    for dir in &args.beside {
        runs.push(Run::read(dir)?);
    }
    print!("{}", results_table(&runs));
    if let Some(file) = &args.bench {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the bench file {}", file.display()))?;
        print!("\n{}", performance_table(file, &text)?);
    }
    Ok(())
}

/// A stage's summary under an artifacts folder; one not written yet says how to make it.
fn read_summary<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    read_json_if_exists(path)?
        .with_context(|| format!("cannot read {} (run `just all` first)", path.display()))
}

/// JSON objects, one a line; other lines (cargo's, a script's messages) are skipped.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What one artifacts folder recorded.
struct Run {
    root: PathBuf,
    data: DataSummary,
    train: TrainSummary,
    history: Vec<HistoryRow>,
    metrics: metrics::Metrics,
    /// The last timing line of each stage.
    timings: BTreeMap<String, Value>,
}

impl Run {
    fn read(root: &Path) -> Result<Run> {
        let layout = Layout::new(root);
        let dir = |s| layout.stage_dir(s);
        // Absent when the stages ran without `just all`: the table says so. Unreadable is an error.
        let timings_path = root.join(TIMINGS_FILE);
        let timings_text = match std::fs::read_to_string(&timings_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.with_context(|| format!("cannot read {}", timings_path.display()))?,
        };
        let mut timings = BTreeMap::new();
        for line in json_lines(&timings_text) {
            if let Some(stage) = line["stage"].as_str() {
                timings.insert(stage.to_string(), line.clone());
            }
        }
        Ok(Run {
            root: root.to_path_buf(),
            data: read_summary(&dir(StageId::DataPrep).join(pipeline::data::SUMMARY_FILE))?,
            train: read_summary(&dir(StageId::Train).join(pipeline::train_summary::SUMMARY_FILE))?,
            history: history::read_parquet(&dir(StageId::Train).join(history::HISTORY_FILE))?,
            metrics: read_summary(
                &dir(StageId::Evaluate).join(pipeline::predictions::METRICS_FILE),
            )?,
            timings,
        })
    }

    /// The stage's wall time from its timing line (scripts/timed.sh names it as the stage).
    fn wall_s(&self, stage: StageId) -> Option<f64> {
        self.timings.get(stage.recipe())?["wall_s"].as_f64()
    }

    /// The run's date, commit, machine and load, from its timing lines.
    fn conditions(&self) -> String {
        let Some(first) = self.timings.values().next() else {
            return format!(
                "{}: no {TIMINGS_FILE} (stage times are recorded by `just all`)",
                self.root.display()
            );
        };
        let loads: Vec<f64> = self
            .timings
            .values()
            .flat_map(|t| [t["load_before"].as_f64(), t["load_after"].as_f64()])
            .flatten()
            .collect();
        let (cpu, wall): (f64, f64) = self.timings.values().fold((0.0, 0.0), |(c, w), t| {
            let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
            (c + f("user_s") + f("sys_s"), w + f("wall_s"))
        });
        let (lo, hi) = loads
            .iter()
            .fold((f64::INFINITY, 0f64), |(lo, hi), &l| (lo.min(l), hi.max(l)));
        format!(
            "{}: {} at commit {}, {} ({} CPUs); load average {lo:.1}–{hi:.1} at the stages' \
             starts and ends; the stages used {:.2} CPUs on average",
            self.root.display(),
            first["date"].as_str().unwrap_or("?"),
            first["commit"].as_str().unwrap_or("?"),
            first["cpu"].as_str().unwrap_or("?"),
            first["cpus"],
            cpu / wall.max(1e-9),
        )
    }

    fn epochs(&self) -> Vec<&HistoryRow> {
        let rows = self.history.iter().filter(|r| r.kind == RowKind::Epoch);
        rows.collect()
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("–".into(), |s| format!("{s:.1} s"))
}

fn results_table(runs: &[Run]) -> String {
    let mut out = String::new();
    for r in runs {
        out.push_str(&format!("- {}\n", r.conditions()));
    }
    let header: Vec<String> = runs.iter().map(|r| r.root.display().to_string()).collect();
    out.push_str(&format!(
        "\n| | {} |\n|---|{}\n",
        header.join(" | "),
        "---|".repeat(runs.len())
    ));
    let mut row = |label: String, cell: &dyn Fn(&Run) -> String| {
        let cells: Vec<String> = runs.iter().map(cell).collect();
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    };
    let first = &runs[0];
    let reviews = first.data.train.count + first.data.validation.count + first.data.test.count;
    row(StageId::DataPrep.to_string(), &|r| {
        seconds(r.wall_s(StageId::DataPrep))
    });
    row(
        format!("{} ({} reviews)", StageId::Tokenize, thousands(reviews)),
        &|r| seconds(r.wall_s(StageId::Tokenize)),
    );
    row(
        format!(
            "{}, {} epoch{} + validation after each",
            StageId::Train,
            first.train.epochs,
            if first.train.epochs == 1 { "" } else { "s" }
        ),
        &|r| format!("{:.0} s", r.train.wall_time_s),
    );
    row("training throughput".into(), &|r| {
        format!("{:.1} samples/s", r.train.samples_per_s)
    });
    row(
        format!(
            "{}, {} test reviews (whole stage)",
            StageId::Evaluate,
            thousands(first.data.test.count)
        ),
        &|r| match r.wall_s(StageId::Evaluate) {
            Some(s) => format!("{s:.0} s ({:.1} reviews/s)", r.data.test.count as f64 / s),
            None => "–".into(),
        },
    );
    row(StageId::Report.to_string(), &|r| {
        seconds(r.wall_s(StageId::Report))
    });
    row("whole chain".into(), &|r| {
        // Every stage but export: the chain the notebook's figures (docs/results.md) compare
        // with, which has no export step.
        let chain = StageId::ALL.into_iter().filter(|&s| s != StageId::Export);
        let all: Option<f64> = chain.map(|s| r.wall_s(s)).sum();
        all.map_or("–".into(), |s| format!("{:.1} min", s / 60.0))
    });
    for (i, _) in first.epochs().iter().enumerate() {
        let label = if i == 0 {
            "validation loss / accuracy, epoch 1".to_string()
        } else {
            format!("epoch {}", i + 1)
        };
        row(label, &|r| match r.epochs().get(i) {
            Some(e) => format!(
                "{:.4} / {:.4}",
                e.val_loss.unwrap_or(f64::NAN),
                e.val_accuracy.unwrap_or(f64::NAN)
            ),
            None => "–".into(),
        });
    }
    row("mean train loss per epoch".into(), &|r| {
        let losses: Vec<String> = r
            .epochs()
            .iter()
            .map(|e| format!("{:.3}", e.train_loss))
            .collect();
        losses.join(", ")
    });
    row("**test accuracy**".into(), &|r| {
        format!("**{:.4}**", r.metrics.accuracy)
    });
    let scores = |s: &metrics::ClassScores| {
        format!("{:.4} / {:.4} / {:.4}", s.precision, s.recall, s.f1_score)
    };
    row("negative: precision / recall / F1".into(), &|r| {
        scores(&r.metrics.classification_report.negative)
    });
    row("positive: precision / recall / F1".into(), &|r| {
        scores(&r.metrics.classification_report.positive)
    });
    row("macro F1".into(), &|r| {
        format!("{:.4}", r.metrics.classification_report.macro_avg.f1_score)
    });
    row("**ROC-AUC**".into(), &|r| match r.metrics.roc_auc {
        Some(auc) => format!("**{auc:.4}**"),
        None => "–".into(),
    });
    out
}

/// `samples/s (CPU s/step)` of a bench line.
fn throughput(line: &Value) -> String {
    let mut s = format!(
        "{:.1} samples/s",
        line["samples_per_s"].as_f64().unwrap_or(f64::NAN)
    );
    if let Some(cpu) = line["cpu_s_per_step"].as_f64() {
        s.push_str(&format!(" ({cpu:.2} CPU s/step)"));
    }
    s
}

fn ratio(ours: &Value, reference: Option<&Value>, key: &str) -> String {
    match (ours[key].as_f64(), reference.and_then(|r| r[key].as_f64())) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// Ours (fused kernels) against the references measured in the same bench run: candle's
/// composed ops, PyTorch + PEFT (scripts/torch_bench.py), and for the tokenizer the same
/// encoder without its prefix shortcut and Python's `tokenizers` (scripts/tokenizer_bench.py).
fn performance_table(file: &Path, text: &str) -> Result<String> {
    let lines = json_lines(text);
    if lines.is_empty() {
        bail!("{} holds no JSON lines of `just bench`", file.display())
    }
    let mut out = String::new();
    // The line scripts/timed.sh wrote about the whole bench run.
    if let Some(m) = lines.iter().rev().find(|l| l["stage"] == "bench") {
        out.push_str(&format!(
            "- {}: {} at commit {}, {} ({} CPUs); load average {:.1} before, {:.1} after\n\n",
            file.display(),
            m["date"].as_str().unwrap_or("?"),
            m["commit"].as_str().unwrap_or("?"),
            m["cpu"].as_str().unwrap_or("?"),
            m["cpus"],
            m["load_before"].as_f64().unwrap_or(f64::NAN),
            m["load_after"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    out.push_str(
        "| | ours | Rust reference¹ | ratio | Python reference² | ratio |\n|---|---|---|---|---|---|\n",
    );
    let find = |bench: &str, pick: &dyn Fn(&Value) -> bool| {
        lines.iter().rev().find(|l| l["bench"] == bench && pick(l))
    };
    if let Some(t) = find("tokenize", &|l| l["impl"].is_null()) {
        let python = find("tokenize", &|l| !l["impl"].is_null());
        let whole = t["whole_text_reviews_per_s"].as_f64().unwrap_or(f64::NAN);
        let ours = t["reviews_per_s"].as_f64().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| tokenize, {} test reviews padded to {} | {} reviews/s | {} reviews/s | {:.2}× | {} | {} |\n",
            thousands(t["reviews"].as_u64().unwrap_or(0) as usize),
            t["max_len"],
            thousands(ours as usize),
            thousands(whole as usize),
            ours / whole,
            python.map_or("–".into(), |p| format!(
                "{} reviews/s ({})",
                thousands(p["reviews_per_s"].as_f64().unwrap_or(0.0) as usize),
                p["impl"].as_str().unwrap_or("?")
            )),
            ratio(t, python, "reviews_per_s"),
        ));
    }
    for (bench, what) in [
        ("inference", "inference (forward, merged weights)"),
        ("train_step", "training step (forward + backward + AdamW)"),
    ] {
        for ours in lines
            .iter()
            .filter(|l| l["bench"] == bench && l["kernels"] == "auto")
        {
            let same = |l: &Value| {
                ["model", "device", "dtype", "batch", "seq"]
                    .iter()
                    .all(|k| l[*k] == ours[*k])
            };
            let composed = find(bench, &|l| l["kernels"] == "composed" && same(l));
            let torch = find(bench, &|l| l["impl"] == "pytorch+peft" && same(l));
            out.push_str(&format!(
                "| {what}, {} {}, {} × {} | {} | {} | {} | {} | {} |\n",
                ours["model"].as_str().unwrap_or("?"),
                ours["dtype"].as_str().unwrap_or("?"),
                ours["batch"],
                ours["seq"],
                throughput(ours),
                composed.map_or("–".into(), throughput),
                ratio(ours, composed, "samples_per_s"),
                torch.map_or("–".into(), throughput),
                ratio(ours, torch, "samples_per_s"),
            ));
        }
    }
    out.push_str(
        "\n¹ the same tokenizer without its prefix shortcut; candle's composed ops (`--kernels \
         composed`). ² Hugging Face `tokenizers` through Python (scripts/tokenizer_bench.py); \
         PyTorch + PEFT (scripts/torch_bench.py). Measured in the same `just bench` run.\n",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn performance_rows_pair_each_benchmark_with_its_references() {
        let text = r#"   Compiling tokenize
{"bench":"tokenize","max_len":128,"reviews":20000,"reviews_per_s":5000.0,"whole_text_reviews_per_s":2500.0}
{"bench":"train_step","kernels":"auto","model":"minilm","device":"cpu","dtype":"f32","batch":16,"seq":128,"samples_per_s":14.0,"cpu_s_per_step":1.14}
{"bench":"train_step","kernels":"composed","model":"minilm","device":"cpu","dtype":"f32","batch":16,"seq":128,"samples_per_s":7.0}
{"bench":"train_step","kernels":"composed","model":"minilm","device":"cpu","dtype":"f32","batch":8,"seq":128,"samples_per_s":1.0}
{"bench":"train_step","impl":"pytorch+peft","model":"minilm","device":"cpu","dtype":"f32","batch":16,"seq":128,"samples_per_s":10.0}
{"bench":"tokenize","impl":"tokenizers 0.23 (Python)","reviews":20000,"max_len":128,"reviews_per_s":2000}
"#;
        let table = performance_table(Path::new("bench.jsonl"), text).unwrap();
        let row = |start: &str| {
            let line = table.lines().find(|l| l.starts_with(start));
            line.unwrap_or_else(|| panic!("no {start} row in\n{table}"))
                .to_string()
        };
        assert_eq!(
            row("| tokenize"),
            "| tokenize, 20,000 test reviews padded to 128 | 5,000 reviews/s | 2,500 reviews/s \
             | 2.00× | 2,000 reviews/s (tokenizers 0.23 (Python)) | 2.50× |"
        );
        // The composed reference of the same batch size, not the batch-8 one.
        assert_eq!(
            row("| training step"),
            "| training step (forward + backward + AdamW), minilm f32, 16 × 128 | 14.0 samples/s \
             (1.14 CPU s/step) | 7.0 samples/s | 2.00× | 10.0 samples/s | 1.40× |"
        );
        assert!(performance_table(Path::new("b"), "no json\n").is_err());
    }

    #[test]
    fn a_missing_summary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", Run::read(dir.path()).err().unwrap());
        let want = Layout::new(dir.path())
            .stage_dir(StageId::DataPrep)
            .join(pipeline::data::SUMMARY_FILE);
        assert!(
            err.contains(&want.display().to_string()) && err.contains("just all"),
            "{err}"
        );
    }
}
