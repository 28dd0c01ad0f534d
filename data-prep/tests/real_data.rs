//! On the real IMDb: the hub's parquet files through the HF cache and Stanford's tarball from
//! `../shared/data` (each test prints why it skipped where they cannot be had).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::*;
use data_prep::source;
use test_support::{real_dataset_file, require, shared_file, IMDB, IMDB_TEST, IMDB_TRAIN};

/// The snapshot folder of the real IMDb in the HF cache (both parquet files in it), and
/// Stanford's tarball.
fn real_imdb() -> Result<(PathBuf, PathBuf), String> {
    real_dataset_file(IMDB, IMDB_TEST)?;
    let train = real_dataset_file(IMDB, IMDB_TRAIN)?;
    let snapshot = train
        .parent()
        .and_then(Path::parent)
        .ok_or("no snapshot folder")?
        .to_path_buf();
    Ok((snapshot, shared_file("data/aclImdb_v1.tar.gz")?))
}

#[test]
fn real_imdb_splits_into_2500_5000_20000() {
    let (_, tarball) = require!(real_imdb());
    let hub_cache = test_support::hub().cache_dir().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for (name, source) in [
        ("hub", Path::new("stanfordnlp/imdb")),
        ("tar", tarball.as_path()),
    ] {
        let root = tmp.path().join(name);
        let mut config = config(&root, source);
        config.data.train_fraction = 0.1; // the repository's setting
        let out = data_prep_with_hub_cache(&config_file(&root, &config), &[], &hub_cache);
        assert!(out.status.success(), "{}", stderr(&out));
        // The hub dataset's summary names the commit `main` resolved to in the cache.
        let summary: pipeline::data::DataSummary = serde_json::from_str(
            &std::fs::read_to_string(config.artifacts.join("data/summary.json")).unwrap(),
        )
        .unwrap();
        let want = (name == "hub").then(|| {
            let refs = hub_cache.join("datasets--stanfordnlp--imdb/refs/main");
            std::fs::read_to_string(refs).unwrap().trim().to_string()
        });
        assert_eq!(summary.resolved_commit, want, "{name}");
        assert_eq!(summary.revision, "main");
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
    let (snapshot, tarball) = require!(real_imdb());
    let parquet = source::resolve(&snapshot.display().to_string(), "main")
        .unwrap()
        .load()
        .unwrap();
    let tar = source::resolve(&tarball.display().to_string(), "main")
        .unwrap()
        .load()
        .unwrap();
    for (p, t) in [(&parquet.train, &tar.train), (&parquet.test, &tar.test)] {
        assert_eq!((p.len(), p.positives()), (25_000, 12_500));
        assert_eq!((&p.texts, &p.labels), (&t.texts, &t.labels));
    }
}
