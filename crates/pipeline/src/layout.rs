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
//! ```
//! Each stage folder also holds the stage's `stamp.json`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A pipeline stage, named as its `just` recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageId {
    DataPrep,
    Tokenize,
    Train,
    Evaluate,
    Report,
}

impl StageId {
    pub const ALL: [StageId; 5] = [
        StageId::DataPrep,
        StageId::Tokenize,
        StageId::Train,
        StageId::Evaluate,
        StageId::Report,
    ];

    /// The `just` recipe (and binary) that runs the stage.
    pub fn recipe(self) -> &'static str {
        match self {
            StageId::DataPrep => "data-prep",
            StageId::Tokenize => "tokenize",
            StageId::Train => "train",
            StageId::Evaluate => "evaluate",
            StageId::Report => "report",
        }
    }

    pub fn from_recipe(name: &str) -> Option<StageId> {
        Self::ALL.into_iter().find(|s| s.recipe() == name)
    }

    /// Its folder under the artifacts root.
    pub fn dir_name(self) -> &'static str {
        match self {
            StageId::DataPrep => "data",
            StageId::Tokenize => "tokens",
            StageId::Train => "train",
            StageId::Evaluate => "evaluate",
            StageId::Report => "report",
        }
    }

    /// The config keys whose values the stage's outputs depend on.
    pub fn config_keys(self) -> &'static [&'static str] {
        match self {
            StageId::DataPrep => &["seed", "data"],
            StageId::Tokenize => &["model.source", "model.revision", "model.max_len"],
            // model.max_len reaches train through the tokens too; recorded here so that the
            // train stamp alone says what the adapter was trained for (predict checks it).
            StageId::Train => &[
                "seed",
                "model.source",
                "model.revision",
                "model.max_len",
                "lora",
                "training",
            ],
            StageId::Evaluate => &["model.source", "model.revision", "evaluate"],
            StageId::Report => &["report"],
        }
    }
}

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
    pub fn data_file(split: Split) -> String {
        format!("{split}.parquet")
    }

    /// `tokens/{split}.safetensors`, relative to the tokens folder.
    pub fn tokens_file(split: Split) -> String {
        format!("{split}.safetensors")
    }

    /// Resumable training state; outside `train/` so that it survives a crash
    /// (the stage folder is only replaced when training completes).
    pub fn train_checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints").join("train")
    }
}
