//! The data-prep stage: IMDb from a hub dataset, a parquet folder or
//! Stanford's aclImdb (folder or tarball) → `artifacts/data/`
//! `{train,validation,test}.parquet`, `summary.json` and the stamp.

pub mod cli;
pub mod source;
pub mod split;

use std::collections::HashSet;
use std::path::Path;

use anyhow::{ensure, Result};
use common::format::thousands;
use pipeline::atomic::write_json;
use pipeline::data::{DataSummary, SplitSummary, SUMMARY_FILE};
pub use pipeline::runner::Outcome;
use pipeline::runner::{self, Context, Inputs, Recorded, Stage, StageInputs};
use pipeline::stamp::hash_bytes;
use pipeline::{Config, Layout, Split, StageId};

/// The source identity of this stage's code (its build script computes it).
pub const CODE: &str = env!("STAGE_IDENTITY");

/// The stage; the source is resolved when it says where its inputs are.
#[derive(Default)]
pub struct DataPrep {
    source: Option<source::Source>,
}

impl StageInputs for DataPrep {
    fn id(&self) -> StageId {
        StageId::DataPrep
    }

    fn code(&self) -> &'static str {
        CODE
    }

    fn inputs(&mut self, ctx: &Context) -> Result<Inputs> {
        let data = &ctx.config.data;
        let source = source::resolve(&data.source, &data.revision)?;
        let files = source.files()?;
        self.source = Some(source);
        Ok(Inputs {
            sources: vec![files],
            ..Inputs::default()
        })
    }
}

impl Stage for DataPrep {
    type Summary = DataSummary;

    /// Reads the source, splits it and writes the splits and their summary.
    fn run(&mut self, ctx: &Context, inputs: &Recorded, out: &Path) -> Result<DataSummary> {
        let config = ctx.config;
        let source = self.source.as_ref().expect("inputs() resolved the source");
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
            revision: config.data.revision.clone(),
            resolved_commit: source.resolved_commit(),
            source_hash: hash_bytes(
                inputs
                    .sources
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
        for split in Split::ALL {
            splits
                .get(split)
                .write_parquet(&out.join(Layout::data_file(split)))?;
        }
        write_json(&out.join(SUMMARY_FILE), &summary)?;
        Ok(summary)
    }

    /// Counts and label balance per split.
    fn describe(&self, s: &DataSummary) -> Vec<String> {
        let mut lines = vec![format!(
            "from {} ({}), seed {}",
            s.source, s.source_kind, s.seed
        )];
        for (name, split) in [
            ("train", &s.train),
            ("validation", &s.validation),
            ("test", &s.test),
        ] {
            lines.push(format!(
                "  {name:<10} {:>6} reviews  {:>6} negative  {:>6} positive  ({:.1}% positive)",
                thousands(split.count),
                thousands(split.negative),
                thousands(split.positive),
                100.0 * split.positive_share
            ));
        }
        lines
    }
}

/// Runs the stage: skips it when up to date (unless `force`), else reads the source, splits
/// it and swaps the new outputs in all at once.
pub fn run(config: &Config, force: bool) -> Result<Outcome<DataSummary>> {
    runner::execute(&mut DataPrep::default(), config, force)
}
