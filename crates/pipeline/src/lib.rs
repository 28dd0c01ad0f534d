//! What the pipeline's stages share: the config (`pipeline.yaml`), where
//! artifacts live and what they hold, stamps that let an unchanged stage be
//! skipped, atomic writes, and model/dataset resolution through the HF cache.

pub mod cli;
pub mod config;
pub mod data;
pub mod encode;
pub mod history;
pub mod hub;
pub mod layout;
mod parquet;
pub mod predictions;
pub mod stamp;
pub mod tokens;
pub mod train_summary;

/// Atomic files and folders: one implementation for the workspace, in `common`.
pub use common::atomic;
pub use config::Config;
pub use layout::{Layout, Split, StageId};
