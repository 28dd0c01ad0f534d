//! The tokenize artifact: one safetensors file per split.
//!
//! Tensors: `input_ids` [N, max_len] u32, `attention_mask` [N, max_len] u32
//! (1 = token, 0 = padding), `labels` [N] u32, `rows` [N] u32 (the row of
//! each review in `data/{split}.parquet`, where its `id` is). The header's
//! metadata entry `tokens` holds JSON with `max_len`, `pad_token_id` and
//! `tokenizer` (its source).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

const METADATA_KEY: &str = "tokens";

#[derive(Debug, Clone, PartialEq)]
pub struct TokenSplit {
    pub max_len: usize,
    pub pad_token_id: u32,
    pub tokenizer: String,
    /// Row-major [N, max_len].
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub labels: Vec<u32>,
    pub rows: Vec<u32>,
}

fn le_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl TokenSplit {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Writes the split (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let (ids, mask, labels, rows) = (
            le_bytes(&self.input_ids),
            le_bytes(&self.attention_mask),
            le_bytes(&self.labels),
            le_bytes(&self.rows),
        );
        let tensors = vec![
            (
                "input_ids",
                TensorView::new(Dtype::U32, vec![n, self.max_len], &ids)?,
            ),
            (
                "attention_mask",
                TensorView::new(Dtype::U32, vec![n, self.max_len], &mask)?,
            ),
            ("labels", TensorView::new(Dtype::U32, vec![n], &labels)?),
            ("rows", TensorView::new(Dtype::U32, vec![n], &rows)?),
        ];
        // One metadata entry holding sorted JSON: safetensors keeps metadata in a
        // HashMap, whose order (and so the file's bytes) would vary run to run.
        let info = serde_json::json!({
            "max_len": self.max_len,
            "pad_token_id": self.pad_token_id,
            "tokenizer": self.tokenizer,
        });
        let metadata: HashMap<String, String> =
            [(METADATA_KEY.to_string(), info.to_string())].into();
        let bytes = safetensors::serialize(tensors, Some(metadata))?;
        crate::atomic::write_bytes(path, &bytes)
    }

    /// Reads and checks a split written by [`TokenSplit::write`].
    pub fn read(path: &Path) -> Result<TokenSplit> {
        let bytes = std::fs::read(path).with_context(|| {
            format!("cannot read {} (run `just tokenize` first)", path.display())
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let info: serde_json::Value = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .and_then(|text| serde_json::from_str(text).ok())
            .with_context(|| {
                format!("{}: metadata has no `{METADATA_KEY}` entry", path.display())
            })?;
        let field = |key: &str| {
            info.get(key)
                .with_context(|| format!("{}: metadata has no `{key}`", path.display()))
        };
        let max_len = field("max_len")?
            .as_u64()
            .context("max_len is not a number")? as usize;
        let pad_token_id = field("pad_token_id")?
            .as_u64()
            .context("pad_token_id is not a number")? as u32;
        let tokenizer = field("tokenizer")?.as_str().unwrap_or_default().to_string();
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<u32>> {
            let view = st
                .tensor(name)
                .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
            if view.dtype() != Dtype::U32 || view.shape() != shape {
                bail!(
                    "{}: tensor `{name}` is {:?} {:?}, expected U32 {shape:?}",
                    path.display(),
                    view.dtype(),
                    view.shape()
                );
            }
            Ok(view
                .data()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let n = st
            .tensor("labels")
            .with_context(|| format!("{}: no tensor `labels`", path.display()))?
            .shape()
            .first()
            .copied()
            .unwrap_or(0);
        Ok(TokenSplit {
            max_len,
            pad_token_id,
            tokenizer,
            input_ids: tensor("input_ids", &[n, max_len])?,
            attention_mask: tensor("attention_mask", &[n, max_len])?,
            labels: tensor("labels", &[n])?,
            rows: tensor("rows", &[n])?,
        })
    }
}

/// Per-split counts in `tokens/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenSplitSummary {
    pub count: usize,
    pub truncated: usize,
    pub truncated_share: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let split = TokenSplit {
            max_len: 3,
            pad_token_id: 0,
            tokenizer: "tok".into(),
            input_ids: vec![101, 7, 102, 101, 102, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 0],
            labels: vec![1, 0],
            rows: vec![0, 1],
        };
        split.write(&path).unwrap();
        assert_eq!(TokenSplit::read(&path).unwrap(), split);
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(TokenSplit::read(&path)
            .unwrap_err()
            .to_string()
            .contains("t.safetensors"));
    }
}
