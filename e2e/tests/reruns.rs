//! Reruns and caching across the whole pipeline: each stage library called in-process on a tiny
//! config (the fixture's tiny BERT, 32 reviews per source split, two epochs of batches of 4).
//!
//! A stage does work when its config keys, its inputs' content or its outputs changed, and only
//! then; the stages after it follow when what they read changed.

use std::fs;
use std::path::Path;

use e2e::{changed, parquet_source, run_chain, snapshot, stage_dir, stage_files, tiny_config};
use pipeline::predictions::{Predictions, METRICS_FILE, PREDICTIONS_FILE};
use pipeline::stamp::Stamp;
use pipeline::tokens::TokenSplit;
use pipeline::{Config, Layout, Split, StageId};

use StageId::{DataPrep, Evaluate, Export, Report, Tokenize, Train};

const ALL: [StageId; 6] = StageId::ALL;
/// No stage did work.
const NONE: [StageId; 0] = [];

/// A tiny run in a fresh temp dir: its own data source and artifacts root.
fn setup() -> (tempfile::TempDir, Config) {
    let tmp = tempfile::tempdir().unwrap();
    let data = parquet_source(&tmp.path().join("imdb"), 32).unwrap();
    let c = tiny_config(&tmp.path().join("artifacts"), &data);
    (tmp, c)
}

fn chain(c: &Config) -> Vec<StageId> {
    run_chain(c).unwrap_or_else(|e| panic!("{e:#}"))
}

/// What every stage writes with the tiny config (SVG figures), stamps included.
const ARTIFACTS: &[&str] = &[
    "data/train.parquet",
    "data/validation.parquet",
    "data/test.parquet",
    "data/summary.json",
    "data/stamp.json",
    "tokens/train.safetensors",
    "tokens/validation.safetensors",
    "tokens/test.safetensors",
    "tokens/summary.json",
    "tokens/stamp.json",
    "train/adapter/adapter_config.json",
    "train/adapter/adapter_model.safetensors",
    "train/history.parquet",
    "train/summary.json",
    "train/log.jsonl",
    "train/stamp.json",
    "evaluate/predictions.parquet",
    "evaluate/metrics.json",
    "evaluate/classification_report.txt",
    "evaluate/examples.json",
    "evaluate/stamp.json",
    "report/report.html",
    "report/report.md",
    "report/loss.svg",
    "report/val_accuracy.svg",
    "report/roc_curve.svg",
    "report/confusion_matrix.svg",
    "report/probability_histogram.svg",
    "report/stamp.json",
    "export/config.json",
    "export/model.safetensors",
    "export/tokenizer.json",
    "export/tokenizer_config.json",
    "export/stamp.json",
];

#[test]
fn a_full_chain_writes_every_artifact_and_a_second_does_nothing() {
    let (_tmp, c) = setup();
    assert_eq!(chain(&c), ALL, "a fresh root runs every stage");
    let first = snapshot(&c);
    let missing: Vec<_> = ARTIFACTS
        .iter()
        .filter(|a| !first.contains_key(**a))
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}; have {:?}",
        first.keys()
    );
    for (path, bytes) in &first {
        assert!(!bytes.is_empty(), "{path} is empty");
        let name = path.rsplit('/').next().unwrap();
        assert!(
            !name.starts_with('.'),
            "a staging leftover: {path} (outputs are renamed into place)"
        );
    }
    assert!(
        !first.keys().any(|k| k.starts_with("checkpoints/")),
        "training checkpoints are removed once the adapter is committed"
    );
    // Only PNG when asked: the config says SVG.
    assert!(!first.keys().any(|k| k.ends_with(".png")));
    // The report shows this run's numbers.
    let metrics: metrics::Metrics =
        serde_json::from_slice(&first["evaluate/metrics.json"]).unwrap();
    let md = String::from_utf8(first["report/report.md"].clone()).unwrap();
    assert!(md.contains(&format!("{:.4}", metrics.accuracy)), "{md}");
    assert_eq!(metrics.n_samples, 24);

    assert_eq!(
        chain(&c),
        NONE,
        "nothing changed: every stage is up to date"
    );
    assert!(
        changed(&first, &snapshot(&c)).is_empty(),
        "and nothing was rewritten"
    );
}

/// Runs the chain with `edit` applied and returns (the stages that ran, the files changed).
fn rerun_with(c: &mut Config, edit: impl FnOnce(&mut Config)) -> (Vec<StageId>, Vec<String>) {
    let before = snapshot(c);
    edit(c);
    let ran = chain(c);
    let after = snapshot(c);
    for stage in ALL {
        let files_changed =
            !changed(&stage_files(&before, stage), &stage_files(&after, stage)).is_empty();
        assert_eq!(
            ran.contains(&stage),
            files_changed,
            "{stage:?}: a stage's folder changes exactly when it runs"
        );
    }
    assert_eq!(chain(c), NONE, "then everything is up to date");
    (ran, changed(&before, &after))
}

#[test]
fn a_changed_key_reruns_the_stages_that_read_it_and_those_after() {
    let (_tmp, mut c) = setup();
    chain(&c);

    let (ran, _) = rerun_with(&mut c, |c| c.training.learning_rate = 2e-2);
    assert_eq!(
        ran,
        [Train, Evaluate, Report, Export],
        "training.learning_rate"
    );
    let (ran, _) = rerun_with(&mut c, |c| c.lora.r = 2);
    assert_eq!(ran, [Train, Evaluate, Report, Export], "lora.r");
    let (ran, _) = rerun_with(&mut c, |c| c.evaluate.threshold = 0.3);
    assert_eq!(ran, [Evaluate, Report], "evaluate.threshold");
    let (ran, changed_files) = rerun_with(&mut c, |c| {
        c.report.formats = vec![pipeline::config::ImageFormat::Png]
    });
    assert_eq!(ran, [Report], "report.formats");
    assert!(changed_files.contains(&"report/loss.png".to_string()));
    assert!(
        changed_files.contains(&"report/loss.svg".to_string()),
        "the SVGs are gone"
    );
    let (ran, _) = rerun_with(&mut c, |c| c.model.max_len = 20);
    assert_eq!(
        ran,
        [Tokenize, Train, Evaluate, Report, Export],
        "model.max_len"
    );
    let (ran, _) = rerun_with(&mut c, |c| {
        c.export.dtype = pipeline::config::ExportDtype::F16
    });
    assert_eq!(ran, [Export], "export.dtype");
}

#[test]
fn a_changed_train_fraction_reruns_every_stage() {
    let (_tmp, mut c) = setup();
    chain(&c);
    let (ran, changed_files) = rerun_with(&mut c, |c| c.data.train_fraction = 0.75);
    assert_eq!(ran, ALL);
    assert!(changed_files.contains(&"data/train.parquet".to_string()));
    let train: pipeline::data::Reviews =
        pipeline::data::Reviews::read_parquet(&stage_dir(&c, DataPrep).join("train.parquet"))
            .unwrap();
    assert_eq!(train.len(), 24);
}

/// Deletes `rel` (under the artifacts root), runs the chain and checks the caching contract:
/// `stage` (the one that wrote `rel`) reruns and rebuilds it, the stages before it do not,
/// and each stage after it reruns exactly when a file it read (as its stamp records them)
/// changed. Returns the stages that ran and the files that changed.
fn delete_and_rerun(c: &Config, rel: &str, stage: StageId) -> (Vec<StageId>, Vec<String>) {
    let before = snapshot(c);
    fs::remove_file(c.artifacts.join(rel)).unwrap();
    let ran = chain(c);
    let after = snapshot(c);
    let changed_files = changed(&before, &after);
    assert!(after.contains_key(rel), "{rel} is rebuilt");
    assert_eq!(ran.first(), Some(&stage), "{rel}: {ran:?}");
    let position = |s: StageId| ALL.iter().position(|&x| x == s).unwrap();
    for later in ALL.into_iter().filter(|&s| position(s) > position(stage)) {
        let stamp: Stamp =
            serde_json::from_slice(&before[&format!("{}/stamp.json", later.dir_name())]).unwrap();
        let read_changed: Vec<&String> = stamp
            .inputs
            .keys()
            .filter(|k| before.contains_key(*k) && before.get(*k) != after.get(*k))
            .collect();
        assert_eq!(
            ran.contains(&later),
            !read_changed.is_empty(),
            "after deleting {rel}, {later:?} must rerun exactly when a file it read changed \
             (changed: {read_changed:?}); ran {ran:?}"
        );
    }
    (ran, changed_files)
}

fn token_splits(c: &Config) -> Vec<TokenSplit> {
    Split::ALL
        .map(|s| TokenSplit::read(&stage_dir(c, Tokenize).join(Layout::tokens_file(s))).unwrap())
        .to_vec()
}

#[test]
fn a_deleted_artifact_reruns_its_stage_and_not_those_before() {
    let (_tmp, c) = setup();
    chain(&c);

    // Tokenize rebuilds the same tokens; what reads them reruns only if the files' bytes
    // changed (see `a_rebuilt_token_file_is_byte_identical` for why they may today).
    let tokens = token_splits(&c);
    let (ran, _) = delete_and_rerun(&c, "tokens/test.safetensors", Tokenize);
    assert!(!ran.contains(&DataPrep));
    assert_eq!(token_splits(&c), tokens, "the same tokens");

    // Until it is rebuilt, a later stage refuses to run and names the stage.
    let test_tokens = stage_dir(&c, Tokenize).join(Layout::tokens_file(Split::Test));
    fs::remove_file(&test_tokens).unwrap();
    let err = format!(
        "{:#}",
        evaluate::run(&c, &evaluate::ModelChoice::default(), false)
            .expect_err("evaluate refuses a damaged upstream")
    );
    assert!(err.contains("just tokenize"), "{err}");
    let err = format!("{:#}", train::run(&c, false).unwrap_err());
    assert!(err.contains("just tokenize"), "{err}");
    assert_eq!(chain(&c).first(), Some(&Tokenize));
    assert_eq!(chain(&c), NONE);

    // A deleted adapter file: train reruns and rebuilds the same adapter (seeded), so evaluate
    // is up to date; the history and summary hold wall-clock figures, so the report reruns.
    let (ran, changed_files) =
        delete_and_rerun(&c, "train/adapter/adapter_model.safetensors", Train);
    assert_eq!(ran, [Train, Report], "changed: {changed_files:?}");
    assert!(
        !changed_files
            .iter()
            .any(|f| f.starts_with("train/adapter/")),
        "the same adapter: {changed_files:?}"
    );

    // A deleted evaluate output: only evaluate reruns, with the same result.
    let (ran, changed_files) = delete_and_rerun(&c, &format!("evaluate/{METRICS_FILE}"), Evaluate);
    assert_eq!(ran, [Evaluate]);
    assert!(changed_files.is_empty(), "{changed_files:?}");

    // A deleted data split: data-prep reruns and rebuilds the same split (seeded).
    let (ran, changed_files) = delete_and_rerun(&c, "data/validation.parquet", DataPrep);
    assert_eq!(ran, [DataPrep]);
    assert!(changed_files.is_empty(), "{changed_files:?}");

    // An edited output is damage too: rebuilt.
    let path = stage_dir(&c, Evaluate).join(PREDICTIONS_FILE);
    let original = fs::read(&path).unwrap();
    fs::write(&path, b"edited").unwrap();
    assert_eq!(chain(&c), [Evaluate]);
    assert_eq!(fs::read(&path).unwrap(), original);
}

/// Rebuilding a token file with the same content must give the same bytes, else every stage
/// after tokenize reruns (train included: minutes on real data) after a deleted token file or
/// a `tokenize --force`, and two identical runs differ.
#[test]
fn a_rebuilt_token_file_is_byte_identical() {
    let (_tmp, c) = setup();
    chain(&c);
    let before = snapshot(&c);
    for _ in 0..4 {
        tokenize::run(&c, true).unwrap();
        let after = snapshot(&c);
        assert!(
            changed(
                &stage_files(&before, Tokenize),
                &stage_files(&after, Tokenize)
            )
            .is_empty(),
            "tokenize --force rewrote different bytes"
        );
    }
    fs::remove_file(c.artifacts.join("tokens/test.safetensors")).unwrap();
    assert_eq!(
        chain(&c),
        [Tokenize],
        "the stages after tokenize stay up to date"
    );
    assert!(changed(&before, &snapshot(&c)).is_empty());
}

/// A run in `root` with the same data source as `c`, everything else equal.
fn same_run_elsewhere(c: &Config, root: &Path) -> Config {
    Config {
        artifacts: root.to_path_buf(),
        ..c.clone()
    }
}

#[test]
fn the_same_config_and_seed_give_the_same_results() {
    let (tmp, c) = setup();
    let other = same_run_elsewhere(&c, &tmp.path().join("artifacts-2"));
    chain(&c);
    chain(&other);
    let (a, b) = (snapshot(&c), snapshot(&other));
    // Token files are compared by content (see `a_rebuilt_token_file_is_byte_identical`).
    assert_eq!(token_splits(&c), token_splits(&other));
    for file in [
        "data/train.parquet",
        "data/validation.parquet",
        "data/test.parquet",
        "tokens/summary.json",
        "train/adapter/adapter_model.safetensors",
        "train/adapter/adapter_config.json",
        "evaluate/predictions.parquet",
        "evaluate/metrics.json",
        "evaluate/classification_report.txt",
        "evaluate/examples.json",
    ] {
        assert!(
            a[file] == b[file],
            "{file} differs between two identical runs"
        );
    }
    let read = |c: &Config| {
        Predictions::read_parquet(&stage_dir(c, Evaluate).join(PREDICTIONS_FILE)).unwrap()
    };
    assert_eq!(read(&c), read(&other));
    // The training history is the same but for the wall-clock throughput.
    let history = |c: &Config| {
        let mut rows =
            pipeline::history::read_parquet(&stage_dir(c, Train).join("history.parquet")).unwrap();
        for r in &mut rows {
            r.samples_per_s = None;
        }
        rows
    };
    assert_eq!(history(&c), history(&other));

    // Another seed gives another adapter (so the check above is not vacuous).
    let third = Config {
        seed: c.seed + 1,
        ..same_run_elsewhere(&c, &tmp.path().join("artifacts-3"))
    };
    chain(&third);
    assert!(
        snapshot(&third)["train/adapter/adapter_model.safetensors"]
            != a["train/adapter/adapter_model.safetensors"]
    );
}
