//! Where the shared fixtures and the HF cache are, beside the project.

use std::path::{Path, PathBuf};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");
const HF_HOME: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/hf-home");

/// The snapshot folder of a hub repository in the shared HF cache.
#[allow(dead_code)]
pub fn hub_snapshot(kind: &str, repo: &str) -> PathBuf {
    let snapshots = Path::new(HF_HOME)
        .join("hub")
        .join(format!("{kind}s--{}", repo.replace('/', "--")))
        .join("snapshots");
    std::fs::read_dir(&snapshots)
        .unwrap_or_else(|e| panic!("{}: {e}", snapshots.display()))
        .next()
        .expect("a snapshot")
        .unwrap()
        .path()
}
