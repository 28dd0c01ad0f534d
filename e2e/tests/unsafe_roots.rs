//! Artifact roots the pipeline must not write into, and what killed runs leave behind, through
//! the stages themselves: a refusal touches nothing; leftovers are cleaned and an interrupted
//! commit undone at the next run, with nothing rerun.

use std::fs;

use e2e::{changed, parquet_source, run_chain, snapshot, tiny_config};
use pipeline::root::HeldRoot;
use pipeline::Config;

fn setup() -> (tempfile::TempDir, Config) {
    let tmp = tempfile::tempdir().unwrap();
    let data = parquet_source(&tmp.path().join("imdb"), 32).unwrap();
    let c = tiny_config(&tmp.path().join("artifacts"), &data);
    (tmp, c)
}

use test_support::tree;

fn data_prep_error(c: &Config) -> String {
    format!("{:#}", data_prep::run(c, false).unwrap_err())
}

#[test]
fn a_checkout_or_a_users_folder_as_root_is_refused_and_left_alone() {
    let (tmp, mut c) = setup();
    // `--set artifacts=.` in a checkout: its own `train/` crate must survive.
    let checkout = tmp.path().join("checkout");
    fs::create_dir_all(checkout.join("train/src")).unwrap();
    fs::write(checkout.join("Cargo.toml"), "[workspace]\n").unwrap();
    fs::write(checkout.join("train/src/lib.rs"), "pub fn f() {}\n").unwrap();
    let before = tree(&checkout);
    c.artifacts = checkout.clone();
    let err = data_prep_error(&c);
    assert!(
        err.contains("holds files the pipeline did not write (Cargo.toml)"),
        "{err}"
    );
    assert!(train::run(&c, false).is_err());
    assert_eq!(tree(&checkout), before, "nothing touched");

    // A folder of the user's that happens to have a stage folder's name.
    let mine = tmp.path().join("mine");
    fs::create_dir_all(mine.join("data")).unwrap();
    fs::write(mine.join("data/holiday.jpg"), "photo").unwrap();
    let before = tree(&mine);
    c.artifacts = mine.clone();
    let err = data_prep_error(&c);
    assert!(err.contains("holds no stamp of stage `data-prep`"), "{err}");
    assert_eq!(tree(&mine), before);

    // An empty `artifacts`.
    c.artifacts = "".into();
    let err = data_prep_error(&c);
    assert!(err.contains("the artifacts root is empty"), "{err}");
}

#[test]
fn a_held_root_is_refused_with_the_holder_named() {
    let (_tmp, c) = setup();
    let held = HeldRoot::acquire(&c.artifacts, "train").unwrap();
    let err = data_prep_error(&c);
    assert!(
        err.contains(&format!("in use by process {} (train)", std::process::id())),
        "{err}"
    );
    drop(held);
    data_prep::run(&c, false).unwrap();
}

#[test]
fn leftovers_of_killed_runs_are_cleaned_and_an_interrupted_commit_undone() {
    let (_tmp, c) = setup();
    run_chain(&c).unwrap();
    let done = snapshot(&c);
    let root = &c.artifacts;
    // Killed while replacing tokens: the folder moved aside, the new one staged beside it.
    fs::rename(root.join("tokens"), root.join(".tokens.old-999999-0")).unwrap();
    fs::create_dir_all(root.join(".tokens.tmp-999999-1")).unwrap();
    fs::write(root.join(".tokens.tmp-999999-1/train.safetensors"), "half").unwrap();
    // Killed while staging report and while writing a checkpoint.
    fs::create_dir_all(root.join(".report.tmp-999998-0/x")).unwrap();
    fs::create_dir_all(root.join("checkpoints/train/.step-00000003.tmp-999997-0")).unwrap();

    assert_eq!(
        run_chain(&c).unwrap(),
        [],
        "the old outputs are back: nothing reruns"
    );
    assert!(changed(&done, &snapshot(&c)).is_empty());
    let mut names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "checkpoints",
            "data",
            "evaluate",
            "export",
            "report",
            "tokens",
            "train"
        ],
        "no leftovers, and no lock once the runs ended"
    );
    assert_eq!(
        fs::read_dir(root.join("checkpoints/train"))
            .unwrap()
            .count(),
        0
    );
}
