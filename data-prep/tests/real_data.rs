//! On the real IMDb in the shared folder (skipped with a note where it is absent).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::*;
use data_prep::source;

fn shared() -> Option<PathBuf> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    let found = shared
        .join("hf-home/hub/datasets--stanfordnlp--imdb")
        .is_dir()
        && shared.join("data/aclImdb_v1.tar.gz").is_file();
    if !found {
        eprintln!("note: skipped, no IMDb in {}", shared.display());
    }
    found.then_some(shared)
}

#[test]
fn real_imdb_splits_into_2500_5000_20000() {
    let Some(shared) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tarball = shared.join("data/aclImdb_v1.tar.gz");
    let mut results = Vec::new();
    for (name, source) in [
        ("hub", Path::new("stanfordnlp/imdb")),
        ("tar", tarball.as_path()),
    ] {
        let root = tmp.path().join(name);
        let mut config = config(&root, source);
        config.data.train_fraction = 0.1; // the repository's setting
        let out = data_prep(
            &config_file(&root, &config),
            &[],
            Some(&shared.join("hf-home")),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let [train, validation, test] = read_splits(&config.artifacts.join("data"));
        assert_eq!(
            (train.len(), validation.len(), test.len()),
            (2_500, 5_000, 20_000)
        );
        let validation_ids: HashSet<_> = validation.ids.iter().collect();
        assert!(test.ids.iter().all(|id| !validation_ids.contains(id)));
        let all: HashSet<_> = train
            .ids
            .iter()
            .chain(&validation.ids)
            .chain(&test.ids)
            .collect();
        assert_eq!(all.len(), 27_500);
        results.push([train, validation, test]);
    }
    // The hub's parquet lists the reviews in Stanford's sorted order, so both sources sample the same texts.
    for (hub, tar) in results[0].iter().zip(&results[1]) {
        assert_eq!((&hub.texts, &hub.labels), (&tar.texts, &tar.labels));
    }
}

#[test]
fn real_tarball_and_hub_parquet_hold_the_same_reviews() {
    let Some(shared) = shared() else { return };
    let snapshot =
        std::fs::read_dir(shared.join("hf-home/hub/datasets--stanfordnlp--imdb/snapshots"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
    let parquet = source::resolve(&snapshot.display().to_string())
        .unwrap()
        .load()
        .unwrap();
    let tar = source::resolve(&shared.join("data/aclImdb_v1.tar.gz").display().to_string())
        .unwrap()
        .load()
        .unwrap();
    for (p, t) in [(&parquet.train, &tar.train), (&parquet.test, &tar.test)] {
        assert_eq!((p.len(), p.positives()), (25_000, 12_500));
        assert_eq!((&p.texts, &p.labels), (&t.texts, &t.labels));
    }
}
