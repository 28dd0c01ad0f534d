//! The shard index of a sharded safetensors checkpoint (`model.safetensors.index.json`, as
//! transformers writes it): which files hold the weights.

use std::path::Path;

use anyhow::{Context, Result};

/// The weights of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded one.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The shard files named by the index's `weight_map`, sorted, each once.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no weight_map object", index.display()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_each_shard_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(INDEX_FILE);
        std::fs::write(
            &index,
            r#"{"metadata": {"total_size": 8}, "weight_map": {
                "b.weight": "model-00002-of-00002.safetensors",
                "a.weight": "model-00001-of-00002.safetensors",
                "a.bias": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            shard_names(&index).unwrap(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
    }

    #[test]
    fn a_bad_index_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(INDEX_FILE);
        std::fs::write(&index, r#"{"metadata": {}}"#).unwrap();
        let err = format!("{:#}", shard_names(&index).unwrap_err());
        assert!(
            err.contains(INDEX_FILE) && err.contains("weight_map"),
            "{err}"
        );
        std::fs::write(&index, "{").unwrap();
        let err = format!("{:#}", shard_names(&index).unwrap_err());
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
