//! `imdb-lora exp` on the tiny pipeline: a 2 × 2 grid over training settings prepares and
//! tokenizes once, an interrupted grid resumes without rerunning a finished run, every run's
//! root is a complete and current artifacts root, `exp show` compares the runs, and bad input
//! is refused before anything is written.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::bail;
use e2e::{parquet_source, snapshot, tiny_config};
use imdb_lora::exp::{self, RunArgs, ShowFormat};
use pipeline::config::ImageFormat;
use pipeline::experiment::Experiment;
use pipeline::{Config, StageId};

fn args(config: &Path, dir: &Path, grid: &[&str], sets: &[&str]) -> RunArgs {
    RunArgs {
        config: config.to_path_buf(),
        grid: grid.iter().map(|s| s.to_string()).collect(),
        sets: sets.iter().map(|s| s.to_string()).collect(),
        place: exp::Place {
            name: "grid".into(),
            dir: dir.to_path_buf(),
        },
        max_runs: 12,
        yes: false,
        dry_run: false,
    }
}

/// The tiny config as a file, one epoch, SVG only.
fn config_file(tmp: &Path) -> PathBuf {
    let data = parquet_source(&tmp.join("imdb"), 32).unwrap();
    let mut c = tiny_config(&tmp.join("unused-artifacts"), &data);
    c.training.epochs = 1;
    c.report.formats = vec![ImageFormat::Svg];
    let path = tmp.join("pipeline.yaml");
    fs::write(&path, c.to_yaml()).unwrap();
    path
}

/// The lines of `out` that say what `stage` did, in order.
fn did(out: &str, stage: StageId) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix(stage.recipe()))
        .map(|rest| rest.trim().to_string())
        .collect()
}

fn stage_roots(dir: &Path, stage: StageId) -> usize {
    fs::read_dir(dir.join("grid/stages"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(stage.recipe())
                .is_some_and(|rest| rest.starts_with('-') && rest[1..].len() == 12)
        })
        .count()
}

#[test]
fn a_grid_shares_its_upstream_resumes_after_an_interruption_and_shows_its_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let dir = tmp.path().join("experiments");
    let grid = args(
        &config,
        &dir,
        &["training.learning_rate=1e-2,2e-2", "lora.r=2,4"],
        &["lora.alpha=16"],
    );

    // Interrupted at the third run's training (as a kill would stop it).
    let mut trains = 0;
    let mut out = Vec::new();
    let err = exp::run(
        &grid,
        &mut |stage, c: &Config| {
            if stage == StageId::Train {
                trains += 1;
                if trains == 3 {
                    bail!("killed");
                }
            }
            exp::stage_code(stage, c)
        },
        &mut out,
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("run 3/4") && message.contains("run the same command again"),
        "{message}"
    );
    let first = String::from_utf8(out).unwrap();
    assert!(
        did(&first, StageId::DataPrep)[0].starts_with("ran in"),
        "{first}"
    );
    let exp_dir = dir.join("grid");
    let runs = Experiment::open(&exp_dir).unwrap().runs().unwrap();
    assert_eq!(runs.len(), 3, "the runs begun are recorded");
    let finished = |r: &pipeline::experiment::RunRecord| {
        let mut c: Config = serde_json::from_value(r.config.clone()).unwrap();
        c.artifacts = exp_dir.join("runs").join(&r.name);
        c
    };
    let before: Vec<_> = runs[..2].iter().map(|r| snapshot(&finished(r))).collect();

    // Resumed: the finished runs and the shared stages are not run again.
    let mut out = Vec::new();
    let mut ran: Vec<StageId> = Vec::new();
    exp::run(
        &grid,
        &mut |stage, c: &Config| {
            let did = exp::stage_code(stage, c)?;
            if did {
                ran.push(stage);
            }
            Ok(did)
        },
        &mut out,
    )
    .unwrap();
    let second = String::from_utf8(out).unwrap();
    use StageId::*;
    assert_eq!(
        ran,
        [Train, Evaluate, Report, Train, Evaluate, Report],
        "only runs 3 and 4 work:\n{second}"
    );
    assert_eq!(
        did(&second, DataPrep),
        [
            "up to date",
            "shared with an earlier run",
            "shared with an earlier run",
            "shared with an earlier run"
        ],
        "{second}"
    );
    assert_eq!(
        did(&second, Train)[..2],
        ["up to date", "up to date"],
        "{second}"
    );
    // Over both: data-prep and tokenize ran once, each run trained once.
    for (stage, roots) in [
        (DataPrep, 1),
        (Tokenize, 1),
        (Train, 4),
        (Evaluate, 4),
        (Report, 4),
    ] {
        assert_eq!(stage_roots(&dir, stage), roots, "{stage}");
    }
    let ran_in = |out: &str, stage| {
        did(out, stage)
            .iter()
            .filter(|l| l.starts_with("ran in"))
            .count()
    };
    assert_eq!(ran_in(&first, DataPrep) + ran_in(&second, DataPrep), 1);
    assert_eq!(ran_in(&first, Tokenize) + ran_in(&second, Tokenize), 1);
    assert_eq!(ran_in(&first, Train) + ran_in(&second, Train), 4);

    let runs = Experiment::open(&exp_dir).unwrap().runs().unwrap();
    assert_eq!(runs.len(), 4);
    for (run, before) in runs[..2].iter().zip(&before) {
        assert_eq!(&snapshot(&finished(run)), before, "{} changed", run.name);
    }
    // Each run's root is a complete artifacts root, current for its config (export is not
    // an experiment's stage).
    let mut rates = Vec::new();
    for run in &runs {
        let c = finished(run);
        rates.push((c.training.learning_rate, c.lora.r, c.lora.alpha));
        for (stage, state) in imdb_lora::status::states(&c).unwrap() {
            assert_eq!(
                state.is_up_to_date(),
                stage != Export,
                "{} {stage}: {state:?}",
                run.name
            );
        }
    }
    assert_eq!(
        rates,
        [
            (1e-2, 2, 16.0),
            (1e-2, 4, 16.0),
            (2e-2, 2, 16.0),
            (2e-2, 4, 16.0)
        ]
    );

    // The comparison: the varied settings, every run done, the best validation accuracy marked.
    let exp = Experiment::open(&exp_dir).unwrap();
    let (table, curves) = exp::show(&exp).unwrap();
    assert_eq!(
        table.columns[..3],
        ["#", "training.learning_rate", "lora.r"],
        "{:?}",
        table.columns
    );
    let column = |name: &str| table.columns.iter().position(|c| c == name).unwrap();
    assert_eq!(table.rows.len(), 4);
    let best: Vec<&Vec<String>> = table.rows.iter().filter(|r| r[0].ends_with('*')).collect();
    assert_eq!(best.len(), 1);
    let val = |row: &Vec<String>| row[column("val acc")].parse::<f64>().unwrap();
    assert!(table.rows.iter().all(|r| val(r) <= val(best[0])));
    for row in &table.rows {
        assert_eq!(row[column("state")], "done");
        let test: f64 = row[column("test acc")].parse().unwrap();
        assert!((0.0..=1.0).contains(&test));
    }
    for format in [ShowFormat::Text, ShowFormat::Md, ShowFormat::Csv] {
        let text = table.render(format);
        assert_eq!(
            text.lines().count(),
            4 + 1 + usize::from(format == ShowFormat::Md)
        );
        assert!(text.contains(&runs[3].name), "{text}");
    }
    let written = report::render_experiment(&curves, tmp.path(), &[ImageFormat::Svg]).unwrap();
    let svg = fs::read_to_string(&written[0]).unwrap();
    assert!(svg.contains("#4") && svg.contains("Validation accuracy"));
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let dir = tmp.path().join("experiments");
    let cases: [(&[&str], &[&str], &str); 6] = [
        (&["training.learnin_rate=1e-2,2e-2"], &[], "learnin_rate"),
        (&["lora.r=2,four"], &[], "key `lora.r`"),
        (&["lora.r="], &[], "the grid of `lora.r` is empty"),
        (&["lora.r=2,4"], &["lora.r=8"], "`lora.r` is given twice"),
        (
            &["training.epochs=1,2,3,4,5", "lora.r=1,2,3"],
            &[],
            "the grid has 15 runs",
        ),
        (&["lora.r=2"], &["artifacts=elsewhere"], "--set artifacts"),
    ];
    let mut never_run = |stage: StageId, _: &Config| -> anyhow::Result<bool> {
        panic!("{stage} ran on refused input")
    };
    for (grid, sets, says) in cases {
        let err = exp::run(
            &args(&config, &dir, grid, sets),
            &mut never_run,
            &mut Vec::new(),
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(says), "{grid:?} {sets:?}: {err}");
        assert!(!dir.exists(), "{grid:?}: something was written");
    }
    let mut big = args(
        &config,
        &dir,
        &["training.epochs=1,2,3,4,5", "lora.r=1,2,3"],
        &[],
    );
    big.yes = true;
    big.dry_run = true;
    let mut out = Vec::new();
    exp::run(&big, &mut never_run, &mut out).unwrap();
    let listed = String::from_utf8(out).unwrap();
    assert_eq!(listed.lines().filter(|l| l.starts_with("run ")).count(), 15);
    assert!(!dir.exists(), "a dry run writes nothing");
}
