//! The data-prep stage: IMDb from a hub dataset, a parquet folder or
//! Stanford's aclImdb (folder or tarball) → `artifacts/data/`
//! `{train,validation,test}.parquet`, `summary.json` and the stamp.

pub mod cli;
pub mod source;
pub mod split;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{ensure, Result};
use common::format::thousands;
use pipeline::atomic::{write_json, StagingDir};
use pipeline::data::{DataSummary, SplitSummary, SUMMARY_FILE};
use pipeline::stamp::{hash_bytes, Freshness, StageRun};
use pipeline::{Config, Layout, Split, StageId};

/// What a run did.
#[derive(Debug)]
pub enum Outcome {
    /// The outputs in `dir` match the config and the source: nothing done.
    UpToDate {
        dir: PathBuf,
    },
    Written {
        dir: PathBuf,
        summary: DataSummary,
    },
}

/// Runs the stage: skips it when up to date (unless `force`), else reads the
/// source, splits it and swaps the new outputs in all at once.
pub fn run(config: &Config, force: bool) -> Result<Outcome> {
    let layout = Layout::new(&config.artifacts);
    let source = source::resolve(&config.data.source)?;
    let inputs = source.input_hashes()?;
    let mut stage = StageRun::new(&layout, StageId::DataPrep, config);
    for (name, hash) in &inputs {
        stage.input_hash(name, hash.clone());
    }
    match stage.freshness()? {
        Freshness::UpToDate if !force => return Ok(Outcome::UpToDate { dir: stage.dir }),
        Freshness::UpToDate => eprintln!("data-prep: --force: rebuilding"),
        Freshness::Stale(why) => eprintln!("data-prep: {why}: building"),
    }

    let loaded = source.load()?;
    let splits = split::make_splits(&loaded.train, &loaded.test, &config.data, config.seed)?;
    // Validation and test come from disjoint rows of one split; check it anyway, it is cheap.
    let mut seen = HashSet::new();
    for split in Split::ALL {
        for id in &splits.get(split).ids {
            ensure!(seen.insert(id), "review {id} would appear in two splits");
        }
    }
    let summary = DataSummary {
        source: config.data.source.clone(),
        source_kind: source.kind().into(),
        source_hash: hash_bytes(
            inputs
                .iter()
                .map(|(name, hash)| format!("{name} {hash}\n"))
                .collect::<String>()
                .as_bytes(),
        ),
        seed: config.seed,
        train: SplitSummary::of(&splits.train),
        validation: SplitSummary::of(&splits.validation),
        test: SplitSummary::of(&splits.test),
    };

    // Written only after everything was read and checked: bad input leaves no folder.
    let staged = StagingDir::new(&stage.dir)?;
    for split in Split::ALL {
        splits
            .get(split)
            .write_parquet(&staged.path().join(Layout::data_file(split)))?;
    }
    write_json(&staged.path().join(SUMMARY_FILE), &summary)?;
    stage.write_stamp(staged.path())?;
    let dir = staged.commit()?;
    Ok(Outcome::Written { dir, summary })
}

/// The lines printed after a run: counts and label balance per split.
pub fn report(dir: &std::path::Path, s: &DataSummary) -> String {
    let mut out = format!(
        "data-prep: wrote {} from {} ({}), seed {}\n",
        dir.display(),
        s.source,
        s.source_kind,
        s.seed
    );
    for (name, split) in [
        ("train", &s.train),
        ("validation", &s.validation),
        ("test", &s.test),
    ] {
        let _ = writeln!(
            out,
            "  {name:<10} {:>6} reviews  {:>6} negative  {:>6} positive  ({:.1}% positive)",
            thousands(split.count),
            thousands(split.negative),
            thousands(split.positive),
            100.0 * split.positive_share
        );
    }
    out
}
