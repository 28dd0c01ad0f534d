//! The data-prep artifact: one parquet file per split.
//!
//! Columns: `id` (string, unique within the dataset), `text` (string),
//! `label` (int64, 0 = negative, 1 = positive), `rating` (int64, the star
//! rating when the source has it, else null).

use std::path::Path;

use anyhow::Result;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

/// Reviews of one split, column by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reviews {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    pub labels: Vec<u8>,
    pub ratings: Vec<Option<u8>>,
}

impl Reviews {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The reviews at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Reviews {
        Reviews {
            ids: indices.iter().map(|&i| self.ids[i].clone()).collect(),
            texts: indices.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ratings: indices.iter().map(|&i| self.ratings[i]).collect(),
        }
    }

    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l == 1).count()
    }

    /// Writes the split (atomically).
    pub fn write_parquet(&self, path: &Path) -> Result<()> {
        let mut df = DataFrame::new(
            self.len(),
            vec![
                Column::new("id".into(), &self.ids),
                Column::new("text".into(), &self.texts),
                Column::new(
                    "label".into(),
                    self.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                ),
                Column::new(
                    "rating".into(),
                    self.ratings
                        .iter()
                        .map(|r| r.map(|r| r as i64))
                        .collect::<Vec<_>>(),
                ),
            ],
        )?;
        crate::parquet::write(path, &mut df)
    }

    /// Reads a split written by [`Reviews::write_parquet`]: no nulls (but in `rating`), labels
    /// 0 or 1, ratings 1 to 10.
    pub fn read_parquet(path: &Path) -> Result<Reviews> {
        let table = crate::parquet::Table::read(path, "data-prep")?;
        let labels = table
            .i64s("label")?
            .into_iter()
            .enumerate()
            .map(|(row, l)| match l {
                0 | 1 => Ok(l as u8),
                other => Err(table.bad_value("label", row, format!("{other} is not 0 or 1"))),
            })
            .collect::<Result<_>>()?;
        let ratings = table
            .opt_i64s("rating")?
            .into_iter()
            .enumerate()
            .map(|(row, r)| match r {
                None => Ok(None),
                Some(r @ 1..=10) => Ok(Some(r as u8)),
                Some(other) => Err(table.bad_value(
                    "rating",
                    row,
                    format!("{other} is not a star rating from 1 to 10"),
                )),
            })
            .collect::<Result<_>>()?;
        Ok(Reviews {
            ids: table.strings("id")?,
            texts: table.strings("text")?,
            labels,
            ratings,
        })
    }
}

/// Counts of one split, for the summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitSummary {
    pub count: usize,
    pub negative: usize,
    pub positive: usize,
    pub positive_share: f64,
}

impl SplitSummary {
    pub fn of(reviews: &Reviews) -> Self {
        let positive = reviews.positives();
        Self {
            count: reviews.len(),
            negative: reviews.len() - positive,
            positive,
            positive_share: if reviews.is_empty() {
                0.0
            } else {
                positive as f64 / reviews.len() as f64
            },
        }
    }
}

/// `data/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataSummary {
    pub source: String,
    /// What kind of source it was: hub dataset, parquet folder, aclImdb folder or tarball.
    pub source_kind: String,
    /// `data.revision` (used for a hub dataset).
    #[serde(default)]
    pub revision: String,
    /// The hub commit the dataset's files came from (its snapshot in the HF cache); `None`
    /// for a local source.
    #[serde(default)]
    pub resolved_commit: Option<String>,
    /// sha256 over the source files' contents.
    pub source_hash: String,
    pub seed: u64,
    pub train: SplitSummary,
    pub validation: SplitSummary,
    pub test: SplitSummary,
}

pub const SUMMARY_FILE: &str = "summary.json";

/// `data/{split}.parquet`, in [`crate::Split::ALL`]'s order.
pub const FILES: [&str; 3] = ["train.parquet", "validation.parquet", "test.parquet"];

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, columns: Vec<Column>) {
        let mut df = DataFrame::new(columns[0].len(), columns).unwrap();
        crate::parquet::write(path, &mut df).unwrap();
    }

    fn err(path: &Path) -> String {
        format!("{:#}", Reviews::read_parquet(path).unwrap_err())
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.parquet");
        let reviews = Reviews {
            ids: vec!["train/pos/1".into(), "train/neg/2".into()],
            texts: vec!["good".into(), "bad".into()],
            labels: vec![1, 0],
            ratings: vec![Some(9), None],
        };
        reviews.write_parquet(&path).unwrap();
        assert_eq!(Reviews::read_parquet(&path).unwrap(), reviews);
    }

    #[test]
    fn nulls_and_out_of_range_values_name_the_file_column_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.parquet");
        let f = path.display();
        let ids = |v: Vec<Option<&str>>| Column::new("id".into(), v);
        let texts = |v: Vec<Option<&str>>| Column::new("text".into(), v);
        let labels = |v: Vec<Option<i64>>| Column::new("label".into(), v);
        let ratings = |v: Vec<Option<i64>>| Column::new("rating".into(), v);
        let cases = [
            (
                vec![
                    ids(vec![Some("a"), None]),
                    texts(vec![Some("x"), Some("y")]),
                    labels(vec![Some(1), Some(0)]),
                    ratings(vec![None, None]),
                ],
                format!("{f}: column `id` is null at row 1, expected a value in every row"),
            ),
            (
                vec![
                    ids(vec![Some("a"), Some("b")]),
                    texts(vec![None, Some("y")]),
                    labels(vec![Some(1), Some(0)]),
                    ratings(vec![None, None]),
                ],
                format!("{f}: column `text` is null at row 0, expected a value in every row"),
            ),
            (
                vec![
                    ids(vec![Some("a"), Some("b")]),
                    texts(vec![Some("x"), Some("y")]),
                    labels(vec![Some(1), None]),
                    ratings(vec![None, None]),
                ],
                format!("{f}: column `label` is null at row 1, expected a value in every row"),
            ),
            (
                vec![
                    ids(vec![Some("a"), Some("b")]),
                    texts(vec![Some("x"), Some("y")]),
                    labels(vec![Some(1), Some(3)]),
                    ratings(vec![None, None]),
                ],
                format!("{f}: column `label`, row 1: 3 is not 0 or 1"),
            ),
            (
                vec![
                    ids(vec![Some("a"), Some("b")]),
                    texts(vec![Some("x"), Some("y")]),
                    labels(vec![Some(1), Some(0)]),
                    ratings(vec![Some(300), None]),
                ],
                format!("{f}: column `rating`, row 0: 300 is not a star rating from 1 to 10"),
            ),
            (
                vec![
                    ids(vec![Some("a"), Some("b")]),
                    texts(vec![Some("x"), Some("y")]),
                    Column::new("label".into(), [1.0, 0.0]),
                    ratings(vec![None, None]),
                ],
                format!("{f}: column `label` holds f64, expected int64"),
            ),
        ];
        for (columns, message) in cases {
            write(&path, columns);
            assert_eq!(err(&path), message);
        }
    }
}
