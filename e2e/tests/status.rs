//! `just status` on empty, partial, complete and edited artifact trees: each stage's state, and
//! what changed, without running anything. Also: a device setting is no stage's key, so an
//! evaluate on another device than train's accepts train's outputs.

use std::fs;
use std::path::Path;

use e2e::{parquet_source, run_chain, snapshot, stage_dir, tiny_config};
use imdb_lora::status::states as stage_states;
use pipeline::config::{DeviceSetting, DtypeSetting};
use pipeline::runner::Outcome;
use pipeline::stamp::Change;
use pipeline::status::{render, State};
use pipeline::{Config, StageId};

use StageId::{DataPrep, Evaluate, Export, Report, Tokenize, Train};

fn setup() -> (tempfile::TempDir, Config) {
    let tmp = tempfile::tempdir().unwrap();
    let data = parquet_source(&tmp.path().join("imdb"), 32).unwrap();
    let c = tiny_config(&tmp.path().join("artifacts"), &data);
    (tmp, c)
}

fn states(c: &Config) -> Vec<(StageId, State)> {
    stage_states(c).unwrap_or_else(|e| panic!("{e:#}"))
}

fn state(c: &Config, stage: StageId) -> State {
    states(c).into_iter().find(|(s, _)| *s == stage).unwrap().1
}

fn all_up_to_date(c: &Config) {
    let states = states(c);
    assert!(
        states.iter().all(|(_, s)| s.is_up_to_date()),
        "{}",
        render(&states)
    );
}

/// The files under `dir`, to show that status writes nothing.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if dir.exists() {
        for entry in walk(dir) {
            out.push(entry);
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path.display().to_string());
    }
    out
}

#[test]
fn empty_partial_complete_and_edited_trees() {
    let (_tmp, mut c) = setup();

    // Empty: nothing ran, and asking creates nothing.
    let empty = states(&c);
    assert_eq!(
        empty,
        StageId::ALL.map(|s| (s, State::NeverRan)).to_vec(),
        "{}",
        render(&empty)
    );
    assert!(!c.artifacts.exists(), "status writes nothing");
    assert!(render(&empty).contains("data-prep  not run: no outputs yet"));

    // Partial: data-prep and tokenize ran.
    assert!(matches!(
        data_prep::run(&c, false).unwrap(),
        Outcome::Ran { .. }
    ));
    assert!(matches!(
        tokenize::run(&c, false).unwrap(),
        Outcome::Ran { .. }
    ));
    let partial = states(&c);
    assert_eq!(
        partial,
        vec![
            (DataPrep, State::UpToDate),
            (Tokenize, State::UpToDate),
            (Train, State::NeverRan),
            (Evaluate, State::NeverRan),
            (Report, State::NeverRan),
            (Export, State::NeverRan),
        ],
        "{}",
        render(&partial)
    );

    // Complete.
    run_chain(&c).unwrap();
    all_up_to_date(&c);
    let before = listing(&c.artifacts);
    let files = snapshot(&c);

    // Edited config: the stage that reads the key names it with its old and new value; the
    // stages reading it wait for it.
    let lr = c.training.learning_rate;
    c.training.learning_rate = 1e-3;
    let edited = states(&c);
    let shown = render(&edited);
    assert_eq!(edited[0], (DataPrep, State::UpToDate), "{shown}");
    assert_eq!(edited[1], (Tokenize, State::UpToDate), "{shown}");
    let State::Stale(changes) = &edited[2].1 else {
        panic!("{shown}")
    };
    assert!(
        matches!(&changes[..], [Change::Key { key, .. }] if key == "training.learning_rate"),
        "{shown}"
    );
    let line = format!(
        "config changed: training.learning_rate: {} → 0.001",
        serde_json::json!(lr)
    );
    assert!(shown.contains(&line), "{shown}");
    assert_eq!(edited[3], (Evaluate, State::Waits(vec![Train])), "{shown}");
    assert_eq!(
        edited[4],
        (Report, State::Waits(vec![Train, Evaluate])),
        "{shown}"
    );
    assert_eq!(edited[5], (Export, State::Waits(vec![Train])), "{shown}");
    c.training.learning_rate = lr;
    all_up_to_date(&c);

    // An edited output: its stage says which file, the stage reading it sees its input changed.
    let metrics = stage_dir(&c, Evaluate).join("metrics.json");
    let original = fs::read(&metrics).unwrap();
    fs::write(&metrics, b"{}").unwrap();
    let shown = render(&states(&c));
    assert!(
        matches!(state(&c, Evaluate), State::Stale(ch) if matches!(&ch[..], [Change::Output(o)] if o.contains("metrics.json was modified"))),
        "{shown}"
    );
    assert!(
        matches!(state(&c, Report), State::Stale(ch) if ch.contains(&Change::Input { name: "evaluate/metrics.json".into(), how: "changed" })),
        "{shown}"
    );
    assert_eq!(state(&c, Train), State::UpToDate, "{shown}");
    fs::write(&metrics, original).unwrap();
    all_up_to_date(&c);

    // A deleted output.
    let summary = stage_dir(&c, Tokenize).join("summary.json");
    let original = fs::read(&summary).unwrap();
    fs::remove_file(&summary).unwrap();
    let shown = render(&states(&c));
    assert!(shown.contains("summary.json is missing"), "{shown}");
    assert!(matches!(state(&c, Tokenize), State::Stale(_)), "{shown}");
    fs::write(&summary, original).unwrap();

    // Another build of a stage's code: its stamp records another identity.
    let stamp = stage_dir(&c, Report).join("stamp.json");
    let original = fs::read_to_string(&stamp).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&original).unwrap();
    value["code"] = "0123456789abcdef".into();
    fs::write(&stamp, serde_json::to_string(&value).unwrap()).unwrap();
    let shown = render(&states(&c));
    assert_eq!(
        state(&c, Report),
        State::Stale(vec![Change::Code]),
        "{shown}"
    );
    assert!(shown.contains("the stage's code changed"), "{shown}");
    fs::write(&stamp, original).unwrap();
    all_up_to_date(&c);

    // Asking wrote nothing, and the files are the run's.
    assert_eq!(listing(&c.artifacts), before);
    assert!(e2e::changed(&files, &snapshot(&c)).is_empty());
}

/// `just evaluate --set training.device=cpu` after a `training.device: auto` train: the device
/// is no key, and train recorded the device `auto` resolved to, so nothing is stale.
#[test]
fn evaluate_on_a_named_device_accepts_an_auto_train() {
    let (_tmp, mut c) = setup();
    c.training.device = DeviceSetting::Auto;
    run_chain(&c).unwrap();
    c.training.device = DeviceSetting::Cpu;
    all_up_to_date(&c);
    let outcome = evaluate::run(&c, &evaluate::ModelChoice::default(), true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(matches!(outcome, Outcome::Ran { .. }));
    // The outputs do not depend on the device setting: the forced rerun changed nothing that
    // report reads, so all is current again.
    all_up_to_date(&c);
}

/// With `--adapter DIR`, evaluate reads no train output, yet the dtype of the weights it
/// computes with still decides its outputs: a dtype change makes it stale.
#[test]
fn evaluate_with_its_own_adapter_is_stale_when_the_dtype_changes() {
    let (tmp, mut c) = setup();
    run_chain(&c).unwrap();
    let adapter = tmp.path().join("my-adapter");
    fs::create_dir(&adapter).unwrap();
    for entry in fs::read_dir(stage_dir(&c, Train).join("adapter")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, adapter.join(path.file_name().unwrap())).unwrap();
    }
    let choice = evaluate::ModelChoice {
        model: None,
        adapter: Some(adapter),
    };
    evaluate::run(&c, &choice, true).unwrap_or_else(|e| panic!("{e:#}"));
    let evaluate_state = |c: &Config| {
        let mut stage = evaluate::Evaluate::new(choice.clone());
        let mut stages: [&mut dyn pipeline::runner::StageInputs; 1] = [&mut stage];
        pipeline::status::status(c, &mut stages)
            .unwrap()
            .remove(0)
            .1
    };
    assert_eq!(evaluate_state(&c), State::UpToDate);
    c.training.dtype = DtypeSetting::Bf16;
    assert_eq!(
        evaluate_state(&c),
        State::Stale(vec![Change::Runtime {
            what: "dtype".into(),
            old: Some("f32".into()),
            new: Some("bf16".into()),
        }])
    );
}
