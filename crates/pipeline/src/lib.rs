//! What the pipeline's stages share: the config (`pipeline.yaml`), the graph of stages and
//! what each reads and writes, the one stage runner, stamps that let an unchanged stage be
//! skipped, and the artifacts root's safety. Models and datasets are found by the `hub` crate,
//! texts encoded by `text-encoder`.

pub mod cli;
pub mod config;
pub mod data;
pub mod experiment;
pub mod graph;
pub mod history;
pub mod layout;
mod parquet;
pub mod predictions;
pub mod root;
pub mod runner;
pub mod sources;
pub mod stamp;
pub mod status;
pub mod tokens;
pub mod train_summary;
pub mod upstream;

/// Atomic files and folders: one implementation for the workspace, in `common`.
pub use common::atomic;
pub use config::Config;
pub use layout::{Layout, Split, StageId};
