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

/// `tokens/{split}.safetensors`, in [`crate::Split::ALL`]'s order.
pub const FILES: [&str; 3] = [
    "train.safetensors",
    "validation.safetensors",
    "test.safetensors",
];
/// `tokens/summary.json`: counts and truncation per split.
pub const SUMMARY_FILE: &str = "summary.json";

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
        let info = TokensInfo {
            max_len: self.max_len,
            pad_token_id: self.pad_token_id,
            tokenizer: self.tokenizer.clone(),
        };
        let metadata: HashMap<String, String> =
            [(METADATA_KEY.to_string(), serde_json::to_string(&info)?)].into();
        let bytes = safetensors::serialize(tensors, Some(metadata))?;
        crate::atomic::write_bytes(path, &bytes)
    }

    /// Reads and checks a split written by [`TokenSplit::write`].
    pub fn read(path: &Path) -> Result<TokenSplit> {
        let bytes = std::fs::read(path).with_context(|| {
            format!("cannot read {} (run `just tokenize` first)", path.display())
        })?;
        Self::from_bytes(&bytes).with_context(|| {
            format!(
                "{} is not a valid token file (rerun `just tokenize`)",
                path.display()
            )
        })
    }

    /// Parses and checks a token file's bytes: the header's values are checked before they
    /// size or index anything, labels and mask values are 0 or 1.
    pub fn from_bytes(bytes: &[u8]) -> Result<TokenSplit> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
        let text = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .with_context(|| format!("the header has no `{METADATA_KEY}` metadata entry"))?;
        let info: TokensInfo = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("the `{METADATA_KEY}` metadata entry: {e}"))?;
        if info.max_len == 0 {
            bail!("the `{METADATA_KEY}` metadata entry: max_len is 0, expected at least 1");
        }
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
        let n = match st.tensor("labels").map(|v| v.shape().to_vec()) {
            Ok(shape) if shape.len() == 1 => shape[0],
            Ok(shape) => bail!("tensor `labels` has shape {shape:?}, expected [N]"),
            Err(_) => bail!("no tensor `labels`"),
        };
        let tensor = |name: &str, shape: &[usize], binary: bool| -> Result<Vec<u32>> {
            let view = st
                .tensor(name)
                .map_err(|_| anyhow::anyhow!("no tensor `{name}`"))?;
            if view.dtype() != Dtype::U32 || view.shape() != shape {
                bail!(
                    "tensor `{name}` is {:?} {:?}, expected U32 {shape:?}",
                    view.dtype(),
                    view.shape()
                );
            }
            let values: Vec<u32> = view
                .data()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = values.iter().position(|&v| binary && v > 1) {
                bail!(
                    "tensor `{name}` holds {} at index {i}, expected 0 or 1",
                    values[i]
                );
            }
            Ok(values)
        };
        Ok(TokenSplit {
            max_len: info.max_len,
            pad_token_id: info.pad_token_id,
            tokenizer: info.tokenizer,
            input_ids: tensor("input_ids", &[n, info.max_len], false)?,
            attention_mask: tensor("attention_mask", &[n, info.max_len], true)?,
            labels: tensor("labels", &[n], true)?,
            rows: tensor("rows", &[n], false)?,
        })
    }
}

/// The `tokens` metadata entry, typed: a missing key or a value of the wrong type (a negative
/// `max_len`, a `pad_token_id` beyond u32) is an error, not a default.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensInfo {
    max_len: usize,
    pad_token_id: u32,
    tokenizer: String,
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

    fn tiny() -> TokenSplit {
        TokenSplit {
            max_len: 2,
            pad_token_id: 0,
            tokenizer: "tok".into(),
            input_ids: vec![101, 102, 101, 0],
            attention_mask: vec![1, 1, 1, 0],
            labels: vec![1, 0],
            rows: vec![0, 1],
        }
    }

    /// A token file with the given metadata text and u32 tensors (name, shape, values).
    fn file_with(metadata: &str, tensors: &[(&str, Vec<usize>, Vec<u32>)]) -> Vec<u8> {
        let data: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| le_bytes(v)).collect();
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .zip(&data)
            .map(|((name, shape, _), bytes)| {
                (
                    *name,
                    TensorView::new(Dtype::U32, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        let metadata = HashMap::from([(METADATA_KEY.to_string(), metadata.to_string())]);
        safetensors::serialize(views, Some(metadata)).unwrap()
    }

    fn tensors_of(s: &TokenSplit) -> Vec<(&'static str, Vec<usize>, Vec<u32>)> {
        let n = s.labels.len();
        vec![
            ("input_ids", vec![n, s.max_len], s.input_ids.clone()),
            (
                "attention_mask",
                vec![n, s.max_len],
                s.attention_mask.clone(),
            ),
            ("labels", vec![n], s.labels.clone()),
            ("rows", vec![n], s.rows.clone()),
        ]
    }

    fn err_of(bytes: &[u8]) -> String {
        format!("{:#}", TokenSplit::from_bytes(bytes).unwrap_err())
    }

    #[test]
    fn a_header_that_would_size_or_index_wrongly_is_refused() {
        let good = r#"{"max_len":2,"pad_token_id":0,"tokenizer":"tok"}"#;
        let ok = file_with(good, &tensors_of(&tiny()));
        assert_eq!(TokenSplit::from_bytes(&ok).unwrap(), tiny());

        let zero = TokenSplit {
            max_len: 0,
            input_ids: vec![],
            attention_mask: vec![],
            ..tiny()
        };
        let zero = file_with(
            r#"{"max_len":0,"pad_token_id":0,"tokenizer":"tok"}"#,
            &tensors_of(&zero),
        );
        assert_eq!(
            err_of(&zero),
            "the `tokens` metadata entry: max_len is 0, expected at least 1"
        );
        for (metadata, message) in [
            (
                r#"{"max_len":"2","pad_token_id":0,"tokenizer":"tok"}"#,
                "invalid type: string \"2\", expected usize",
            ),
            (
                r#"{"max_len":-2,"pad_token_id":0,"tokenizer":"tok"}"#,
                "invalid value: integer `-2`, expected usize",
            ),
            (
                r#"{"max_len":2,"pad_token_id":4294967296,"tokenizer":"tok"}"#,
                "expected u32",
            ),
            (
                r#"{"max_len":2,"pad_token_id":0}"#,
                "missing field `tokenizer`",
            ),
            (
                r#"{"max_len":2,"pad_token_id":0,"tokenizer":7}"#,
                "expected a string",
            ),
            ("not json", "the `tokens` metadata entry: expected ident"),
        ] {
            let err = err_of(&file_with(metadata, &tensors_of(&tiny())));
            assert!(
                err.contains("the `tokens` metadata entry") && err.contains(message),
                "{metadata}: {err}"
            );
        }
        let mut bad = tiny();
        bad.labels[1] = 2;
        let err = err_of(&file_with(good, &tensors_of(&bad)));
        assert_eq!(err, "tensor `labels` holds 2 at index 1, expected 0 or 1");
        let mut bad = tiny();
        bad.attention_mask[3] = 7;
        let err = err_of(&file_with(good, &tensors_of(&bad)));
        assert_eq!(
            err,
            "tensor `attention_mask` holds 7 at index 3, expected 0 or 1"
        );
        // max_len disagreeing with the tensors' width.
        let err = err_of(&file_with(
            r#"{"max_len":3,"pad_token_id":0,"tokenizer":"tok"}"#,
            &tensors_of(&tiny()),
        ));
        assert_eq!(err, "tensor `input_ids` is U32 [2, 2], expected U32 [2, 3]");
    }

    #[test]
    fn the_error_names_the_file_and_the_stage_to_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.safetensors");
        let zero = file_with(r#"{"max_len":0,"pad_token_id":0,"tokenizer":"t"}"#, &[]);
        std::fs::write(&path, zero).unwrap();
        let err = format!("{:#}", TokenSplit::read(&path).unwrap_err());
        assert_eq!(
            err,
            format!(
                "{} is not a valid token file (rerun `just tokenize`): the `tokens` metadata \
                 entry: max_len is 0, expected at least 1",
                path.display()
            )
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn check(split: &TokenSplit) {
            let n = split.len();
            assert!(split.max_len >= 1);
            assert_eq!(split.input_ids.len(), n * split.max_len);
            assert_eq!(split.attention_mask.len(), n * split.max_len);
            assert_eq!(split.rows.len(), n);
            assert!(split
                .labels
                .iter()
                .chain(&split.attention_mask)
                .all(|&v| v <= 1));
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
                if let Ok(split) = TokenSplit::from_bytes(&bytes) {
                    check(&split);
                }
            }

            #[test]
            fn a_valid_file_with_bytes_flipped_never_panics(
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            ) {
                let mut bytes = file_with(
                    r#"{"max_len":2,"pad_token_id":0,"tokenizer":"tok"}"#,
                    &tensors_of(&tiny()),
                );
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                if let Ok(split) = TokenSplit::from_bytes(&bytes) {
                    check(&split);
                }
            }

            #[test]
            fn random_headers_give_an_error_or_a_consistent_split(
                max_len in prop_oneof![Just(0u64), 1u64..4, Just(u64::MAX), any::<u64>()],
                pad in prop_oneof![any::<u32>().prop_map(u64::from), any::<u64>()],
                n in 0usize..3,
                width in 0usize..4,
                label in 0u32..3,
                extra in "\\PC{0,8}",
            ) {
                let metadata = format!(
                    r#"{{"max_len":{max_len},"pad_token_id":{pad},"tokenizer":"{}"}}"#,
                    extra.replace(['"', '\\'], "")
                );
                let tensors = vec![
                    ("input_ids", vec![n, width], vec![5; n * width]),
                    ("attention_mask", vec![n, width], vec![1; n * width]),
                    ("labels", vec![n], vec![label; n]),
                    ("rows", vec![n], (0..n as u32).collect()),
                ];
                match TokenSplit::from_bytes(&file_with(&metadata, &tensors)) {
                    Ok(split) => {
                        check(&split);
                        prop_assert_eq!(split.max_len as u64, max_len);
                        prop_assert_eq!(split.pad_token_id as u64, pad);
                    }
                    Err(_) => prop_assert!(
                        max_len == 0 || max_len != width as u64 || pad > u32::MAX as u64
                            || (n > 0 && label > 1)
                    ),
                }
            }
        }
    }
}
