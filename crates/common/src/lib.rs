//! Mechanisms the whole workspace shares, one definition each; no knowledge of the model or
//! of the pipeline, so that every crate may depend on it.
//!
//! - [`atomic`]: files and folders that appear complete or not at all.
//! - [`hash`]: the stable hashes seeds and dropout masks are derived with.
//! - [`shards`]: the safetensors shard index of a sharded checkpoint.
//! - [`format`]: numbers as people read them.
//! - [`json`]: JSON files this program wrote, read back with errors that name them.

pub mod atomic;
pub mod format;
pub mod hash;
pub mod json;
pub mod shards;
