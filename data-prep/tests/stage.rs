//! The stage end to end on tiny sources: formats, splits, determinism, stamps, bad input.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use common::*;
use data_prep::Outcome;
use pipeline::data::{DataSummary, Reviews};
use polars::prelude::*;

fn summary(data_dir: &Path) -> DataSummary {
    serde_json::from_str(&fs::read_to_string(data_dir.join("summary.json")).unwrap()).unwrap()
}

/// Runs the library with `source`, into `root/artifacts`.
fn run(root: &Path, source: &Path) -> anyhow::Result<[Reviews; 3]> {
    let config = config(root, source);
    match data_prep::run(&config, false)? {
        Outcome::Ran { dir, .. } => Ok(read_splits(&dir)),
        other => panic!("{other:?}"),
    }
}

/// The error of a run that must fail, with its causes, after checking it left nothing.
fn failure(root: &Path, source: &Path) -> String {
    let config = config(root, source);
    let err = data_prep::run(&config, false).expect_err("the run must fail");
    assert_no_output(&config.artifacts);
    format!("{err:#}")
}

fn texts_and_labels(splits: &[Reviews; 3]) -> Vec<(Vec<String>, Vec<u8>)> {
    splits
        .iter()
        .map(|r| (r.texts.clone(), r.labels.clone()))
        .collect()
}

#[test]
fn every_source_format_gives_the_same_reviews() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let folder = acl_folder(&t.join("extracted"));
    let stanford = [
        run(&t.join("a"), &folder).unwrap(),
        run(&t.join("b"), &t.join("extracted")).unwrap(), // the folder holding aclImdb/
        run(
            &t.join("c"),
            &tarball(&t.join("aclImdb_v1.tar.gz"), |_| false, &[]),
        )
        .unwrap(),
    ];
    let flat = parquet_folder(&t.join("parquet"));
    let nested = t.join("nested");
    parquet_folder(&nested.join("plain_text"));
    let hf_home = t.join("hf-home");
    hub_cache(&hf_home, "tiny/imdb");
    let hub_config = config(&t.join("d"), Path::new("tiny/imdb"));
    let out = data_prep(&config_file(&t.join("d"), &hub_config), &[], Some(&hf_home));
    assert!(out.status.success(), "{}", stderr(&out));
    let parquet = [
        run(&t.join("e"), &flat).unwrap(),
        run(&t.join("f"), &nested).unwrap(),
        read_splits(&t.join("d/artifacts/data")),
    ];

    let expected = texts_and_labels(&stanford[0]);
    for splits in stanford.iter().chain(&parquet) {
        assert_eq!(texts_and_labels(splits), expected);
    }
    for group in [&stanford, &parquet] {
        for splits in &group[1..] {
            assert_eq!(splits, &group[0]);
        }
    }
    // Ids and ratings are the source's own: checked against the text, which names both.
    for (split, reviews) in pipeline::Split::ALL.iter().zip(&stanford[0]) {
        for i in 0..reviews.len() {
            let (source_split, dir, id) = {
                let mut p = reviews.ids[i].split('/');
                (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
            };
            let rating = reviews.ratings[i].unwrap();
            assert_eq!(
                source_split,
                if *split == pipeline::Split::Train {
                    "train"
                } else {
                    "test"
                }
            );
            assert_eq!(dir, ["neg", "pos"][reviews.labels[i] as usize]);
            assert!(reviews.texts[i].starts_with(&format!("{source_split} {id}: ")));
            assert!(reviews.texts[i].ends_with(&format!(" {rating}/10")));
        }
    }
    for (reviews, stanford) in parquet[0].iter().zip(&stanford[0]) {
        assert!(reviews.ratings.iter().all(Option::is_none));
        for (id, text) in reviews.ids.iter().zip(&reviews.texts) {
            // `{split}/{row}`: the row of the source file, where Stanford's order put the same text.
            let (split, row) = id.split_once('/').unwrap();
            let row: u64 = row.parse().unwrap();
            let per_label = if split == "train" {
                TRAIN_PER_LABEL
            } else {
                TEST_PER_LABEL
            };
            assert!(
                text.starts_with(&format!("{split} {}: ", row % per_label)),
                "{id}: {text}"
            );
        }
        assert_eq!(reviews.len(), stanford.len());
    }
    let kinds: Vec<_> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|d| summary(&t.join(d).join("artifacts/data")).source_kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "aclImdb folder",
            "aclImdb folder",
            "aclImdb tarball",
            "hub dataset",
            "parquet folder",
            "parquet folder"
        ]
    );
}

#[test]
fn split_sizes_follow_the_fractions_and_validation_and_test_are_disjoint() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = acl_folder(tmp.path());
    let [train, validation, test] = run(&tmp.path().join("a"), &folder).unwrap();
    // 40 train reviews × 0.5; 50 test reviews → 20% validation, the rest test.
    assert_eq!((train.len(), validation.len(), test.len()), (20, 10, 40));
    let validation_ids: HashSet<_> = validation.ids.iter().collect();
    assert!(test.ids.iter().all(|id| !validation_ids.contains(id)));
    assert!(train.ids.iter().all(|id| id.starts_with("train/")));
    assert!(validation
        .ids
        .iter()
        .chain(&test.ids)
        .all(|id| id.starts_with("test/")));
    let s = summary(&tmp.path().join("a/artifacts/data"));
    assert_eq!(
        (s.train.count, s.train.positive + s.train.negative),
        (20, 20)
    );
    assert_eq!(s.validation.positive, validation.positives());

    let mut config = config(&tmp.path().join("b"), &folder);
    config.data.stratify = true;
    config.data.train_fraction = 0.3;
    config.data.validation_fraction = 0.4;
    let Outcome::Ran { dir, .. } = data_prep::run(&config, false).unwrap() else {
        panic!()
    };
    let [train, validation, test] = read_splits(&dir);
    assert_eq!((train.len(), train.positives()), (12, 6));
    assert_eq!((validation.len(), validation.positives()), (20, 10));
    assert_eq!((test.len(), test.positives()), (30, 15));

    let mut config = config.clone();
    config.artifacts = tmp.path().join("c/artifacts");
    (
        config.data.max_train,
        config.data.max_validation,
        config.data.max_test,
    ) = (Some(5), Some(3), Some(7));
    let Outcome::Ran { dir, .. } = data_prep::run(&config, false).unwrap() else {
        panic!()
    };
    let capped = read_splits(&dir);
    assert_eq!(capped[0].ids, train.ids[..5]);
    assert_eq!(capped[1].ids, validation.ids[..3]);
    assert_eq!(capped[2].ids, test.ids[..7]);
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tarball(&tmp.path().join("aclImdb_v1.tar.gz"), |_| false, &[]);
    let mut outputs = Vec::new();
    for (name, seed) in [("a", 42), ("b", 42), ("c", 7)] {
        let root = tmp.path().join(name);
        let mut config = config(&root, &source);
        config.seed = seed;
        data_prep::run(&config, false).unwrap();
        outputs.push(files(&root.join("artifacts/data")));
    }
    let names: Vec<_> = outputs[0].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "stamp.json",
            "summary.json",
            "test.parquet",
            "train.parquet",
            "validation.parquet"
        ]
    );
    assert_eq!(outputs[0], outputs[1]);
    let train = |o: &Vec<(String, Vec<u8>)>| o[3].1.clone();
    assert_ne!(
        train(&outputs[0]),
        train(&outputs[2]),
        "another seed samples differently"
    );
}

#[test]
fn a_stage_runs_again_only_when_config_or_source_change_or_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = acl_folder(&tmp.path().join("src"));
    let config = config(tmp.path(), &folder);
    let file = config_file(tmp.path(), &config);
    let data = config.artifacts.join("data");

    let first = data_prep(&file, &[], None);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stdout(&first).contains("train") && stdout(&first).contains("wrote"));
    let written = files(&data);
    let modified = fs::metadata(data.join("train.parquet"))
        .unwrap()
        .modified()
        .unwrap();

    let again = data_prep(&file, &[], None);
    assert!(again.status.success());
    assert_eq!(
        stdout(&again).trim(),
        format!("data-prep: up to date ({})", data.display())
    );
    assert_eq!(files(&data), written);
    assert_eq!(
        fs::metadata(data.join("train.parquet"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );

    // A key it reads reruns it; one it does not read does not.
    let other = data_prep(&file, &["--set", "training.epochs=9"], None);
    assert!(stdout(&other).contains("up to date"));
    let changed = data_prep(&file, &["--set", "data.train_fraction=0.25"], None);
    assert!(stdout(&changed).contains("wrote"), "{}", stdout(&changed));
    assert!(
        stderr(&changed).contains("data.train_fraction"),
        "{}",
        stderr(&changed)
    );
    assert_eq!(summary(&data).train.count, 10);

    let forced = data_prep(
        &file,
        &["--set", "data.train_fraction=0.25", "--force"],
        None,
    );
    assert!(stdout(&forced).contains("wrote"), "{}", stdout(&forced));

    // So does a changed review (a new file beside it, e.g. a README, does not).
    write(&folder.join("README"), b"edited");
    assert!(stdout(&data_prep(
        &file,
        &["--set", "data.train_fraction=0.25"],
        None
    ))
    .contains("up to date"));
    write(&folder.join("train/pos/3_10.txt"), b"edited review");
    let edited = data_prep(&file, &["--set", "data.train_fraction=0.25"], None);
    assert!(
        stderr(&edited).contains("source/train"),
        "{}",
        stderr(&edited)
    );
    assert_eq!(
        fs::read_dir(tmp.path().join("artifacts")).unwrap().count(),
        1,
        "no leftovers"
    );
}

#[test]
fn missing_sources_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for missing in ["nowhere/aclImdb_v1.tar.gz", "data/imdb/aclImdb"] {
        let path = tmp.path().join(missing);
        let err = failure(tmp.path(), &path);
        assert!(
            err.contains(&path.display().to_string()) && err.contains("does not exist"),
            "{err}"
        );
    }
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = failure(tmp.path(), &empty);
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("train-*.parquet"),
        "{err}"
    );
    let only_train = tmp.path().join("half");
    parquet_folder(&only_train);
    fs::remove_file(only_train.join("test-00000-of-00001.parquet")).unwrap();
    let err = failure(tmp.path(), &only_train);
    assert!(err.contains("no test-*.parquet"), "{err}");
}

#[test]
fn an_offline_hub_id_missing_from_the_cache_says_how_to_fix_it() {
    let tmp = tempfile::tempdir().unwrap();
    let hf_home = tmp.path().join("hf-home");
    hub_cache(&hf_home, "tiny/imdb");
    let config = config(tmp.path(), Path::new("someone/imdb"));
    let out = data_prep(&config_file(tmp.path(), &config), &[], Some(&hf_home));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for part in [
        "error: data-prep",
        "someone/imdb",
        "plain_text/train-00000-of-00001.parquet",
        "HF_HUB_OFFLINE",
        "HF_HOME",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert_no_output(&config.artifacts);
}

/// HF_HUB_CACHE names the hub cache folder itself and wins over HF_HOME, as in huggingface_hub.
#[test]
fn hf_hub_cache_names_the_cache_and_wins_over_hf_home() {
    let tmp = tempfile::tempdir().unwrap();
    let hf_home = tmp.path().join("hf-home");
    hub_cache(&hf_home, "tiny/imdb");
    let empty = tmp.path().join("empty-cache");
    fs::create_dir(&empty).unwrap();

    let found = config(&tmp.path().join("a"), Path::new("tiny/imdb"));
    let out = data_prep_with_hub_cache(
        &config_file(&tmp.path().join("a"), &found),
        &[],
        &hf_home.join("hub"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!read_splits(&found.artifacts.join("data"))[0].is_empty());

    let missed = config(&tmp.path().join("b"), Path::new("tiny/imdb"));
    let out = run_offline(
        &config_file(&tmp.path().join("b"), &missed),
        &[],
        [("HF_HOME", Some(&hf_home)), ("HF_HUB_CACHE", Some(&empty))],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&empty.display().to_string()), "{err}");
    assert_no_output(&missed.artifacts);
}

#[test]
fn tarball_entries_outside_aclimdb_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, bad) in [
        "../evil.txt",
        "/etc/evil",
        "aclImdb/../../evil.txt",
        "imdb/train/pos/1_7.txt",
        "./../x",
    ]
    .iter()
    .enumerate()
    {
        let path = tarball(
            &tmp.path().join(format!("{i}/aclImdb_v1.tar.gz")),
            |_| false,
            &[(bad, b"x")],
        );
        let err = failure(tmp.path(), &path);
        assert!(
            err.contains(&path.display().to_string())
                && err.contains(bad.trim_start_matches("./"))
                && err.contains("outside aclImdb/"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn layouts_that_are_not_stanfords_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tarball(
        &tmp.path().join("t/aclImdb_v1.tar.gz"),
        |r| r.split == "train" && r.label == 1,
        &[],
    );
    let err = failure(tmp.path(), &path);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("aclImdb/train/pos"),
        "{err}"
    );

    let folder = acl_folder(&tmp.path().join("f"));
    fs::remove_dir_all(folder.join("test/neg")).unwrap();
    let err = failure(tmp.path(), &folder);
    assert!(
        err.contains(&folder.display().to_string()) && err.contains("test/neg"),
        "{err}"
    );

    let folder = acl_folder(&tmp.path().join("g"));
    write(&folder.join("train/pos/great_10.txt"), b"a review");
    let err = failure(tmp.path(), &folder);
    assert!(
        err.contains("train/pos/great_10.txt") && err.contains("ID_RATING.txt"),
        "{err}"
    );

    let path = tarball(
        &tmp.path().join("d/aclImdb_v1.tar.gz"),
        |_| false,
        &[("aclImdb/test/neg/0_2.txt", b"again")],
    );
    let err = failure(tmp.path(), &path);
    assert!(err.contains("appears twice"), "{err}");

    let not_gz = tmp.path().join("aclImdb_v1.tar.gz");
    fs::write(&not_gz, b"not gzip").unwrap();
    let err = failure(tmp.path(), &not_gz);
    assert!(
        err.contains(&not_gz.display().to_string()) && err.contains("not a readable"),
        "{err}"
    );
}

#[test]
fn empty_and_non_utf8_reviews_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes, message) in [
        (
            "train/neg/5_3.txt",
            &b"caf\xe9 au lait"[..],
            "not valid UTF-8",
        ),
        ("test/pos/7_8.txt", &b" \n"[..], "empty review"),
    ] {
        let folder = acl_folder(&tmp.path().join(name.replace('/', "-")));
        let file = folder.join(name);
        write(&file, bytes);
        let err = failure(tmp.path(), &folder);
        assert!(
            err.contains(&file.display().to_string()) && err.contains(message),
            "{err}"
        );

        let path = tarball(
            &tmp.path()
                .join(format!("{}.tar.gz", name.replace('/', "-"))),
            |r| r.rel_path() == name,
            &[(&format!("aclImdb/{name}"), bytes)],
        );
        let err = failure(tmp.path(), &path);
        assert!(
            err.contains(&path.display().to_string())
                && err.contains(&format!("aclImdb/{name}"))
                && err.contains(message),
            "{err}"
        );
    }
}

#[test]
fn bad_parquet_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let text = |v: Vec<Option<&str>>| Column::new("text".into(), v);
    let label = |v: Vec<i64>| Column::new("label".into(), v);
    let cases: Vec<(Vec<Column>, &str)> = vec![
        (vec![text(vec![Some("fine")])], "no `label` column"),
        (vec![label(vec![1])], "no `text` column"),
        (
            vec![text(vec![Some("fine"), Some("ok")]), label(vec![1, 2])],
            "row 1: label 2 is not 0 or 1",
        ),
        (
            vec![text(vec![Some("fine"), Some("")]), label(vec![1, 0])],
            "row 1: empty or null text",
        ),
        (
            vec![text(vec![None, Some("ok")]), label(vec![1, 0])],
            "row 0: empty or null text",
        ),
        (
            vec![
                text(vec![Some("fine")]),
                Column::new("label".into(), ["pos"]),
            ],
            "column `label` holds str, not integers",
        ),
    ];
    for (i, (columns, message)) in cases.into_iter().enumerate() {
        let dir = parquet_folder(&tmp.path().join(format!("p{i}")));
        let file = dir.join("test-00000-of-00001.parquet");
        write_parquet(&file, columns);
        let err = failure(tmp.path(), &dir);
        assert!(
            err.contains(&file.display().to_string()) && err.contains(message),
            "{message}: {err}"
        );
    }
    let dir = parquet_folder(&tmp.path().join("garbage"));
    let file = dir.join("train-00000-of-00001.parquet");
    fs::write(&file, b"not parquet").unwrap();
    let err = failure(tmp.path(), &dir);
    assert!(
        err.contains(&file.display().to_string()) && err.contains("not a readable parquet"),
        "{err}"
    );
}

#[test]
fn a_failed_run_keeps_the_previous_outputs_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = acl_folder(&tmp.path().join("src"));
    let config = config(tmp.path(), &folder);
    let file = config_file(tmp.path(), &config);
    assert!(data_prep(&file, &[], None).status.success());
    let before = files(&config.artifacts.join("data"));

    let bad = folder.join("train/neg/5_3.txt");
    write(&bad, b"");
    let out = data_prep(&file, &[], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&bad.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(files(&config.artifacts.join("data")), before);
    assert_eq!(
        fs::read_dir(&config.artifacts).unwrap().count(),
        1,
        "no leftovers"
    );
}

#[test]
fn help_describes_the_stage() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_data-prep"))
        .arg("--help")
        .output()
        .unwrap();
    let help = stdout(&out);
    for part in [
        "aclImdb_v1.tar.gz",
        "--config",
        "--force",
        "--set",
        "validation",
    ] {
        assert!(help.contains(part), "{part}: {help}");
    }
}
