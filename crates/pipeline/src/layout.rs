//! Where each stage's artifacts live under the artifacts root.
//!
//! ```text
//! artifacts/
//!   data/      {train,validation,test}.parquet, summary.json      ← data-prep
//!   tokens/    {train,validation,test}.safetensors, summary.json  ← tokenize
//!   train/     adapter/, history.parquet, summary.json            ← train
//!   evaluate/  predictions.parquet, metrics.json, examples.json … ← evaluate
//!   report/    figures, report.html, report.md                    ← report
//!   checkpoints/train/  resumable training state (kept across crashes)
//!   .lock      held by the run in progress
//! ```
//! Each stage folder also holds the stage's `stamp.json`. What each stage writes and reads is
//! declared in [`crate::graph`].

use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::graph::StageId;
use crate::{data, tokens};

/// One of the three data splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Paths of every artifact, from the artifacts root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// The folder of the training checkpoints under the root.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// Where `just all` appends one JSON line per stage run (scripts/timed.sh; `just results`
/// reads it), in the root.
pub const TIMINGS_FILE: &str = "timings.jsonl";

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stage_dir(&self, stage: StageId) -> PathBuf {
        self.root.join(stage.dir_name())
    }

    /// `data/{split}.parquet`, relative to the data folder.
    pub fn data_file(split: Split) -> &'static str {
        data::FILES[split as usize]
    }

    /// `tokens/{split}.safetensors`, relative to the tokens folder.
    pub fn tokens_file(split: Split) -> &'static str {
        tokens::FILES[split as usize]
    }

    /// Resumable training state; outside `train/` so that it survives a crash
    /// (the stage folder is only replaced when training completes).
    pub fn train_checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR).join("train")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_files_follow_split_order() {
        for split in Split::ALL {
            assert_eq!(Layout::data_file(split), format!("{split}.parquet"));
            assert_eq!(Layout::tokens_file(split), format!("{split}.safetensors"));
        }
    }
}
