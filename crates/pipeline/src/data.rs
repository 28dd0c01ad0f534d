//! The data-prep artifact: one parquet file per split.
//!
//! Columns: `id` (string, unique within the dataset), `text` (string),
//! `label` (int64, 0 = negative, 1 = positive), `rating` (int64, the star
//! rating when the source has it, else null).

use std::path::Path;

use anyhow::{bail, Result};
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

    /// Reads a split written by [`Reviews::write_parquet`].
    pub fn read_parquet(path: &Path) -> Result<Reviews> {
        let table = crate::parquet::Table::read(path, "data-prep")?;
        let col = |name: &str| table.column(name);
        let ids = col("id")?
            .str()?
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect();
        let texts = col("text")?
            .str()?
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect();
        let labels = col("label")?
            .i64()?
            .iter()
            .map(|l| match l {
                Some(l @ (0 | 1)) => Ok(l as u8),
                other => bail!("{}: label {other:?} is not 0 or 1", path.display()),
            })
            .collect::<Result<_>>()?;
        let ratings = col("rating")?
            .i64()?
            .iter()
            .map(|r| r.map(|r| r as u8))
            .collect();
        Ok(Reviews {
            ids,
            texts,
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
    /// sha256 over the source files' contents.
    pub source_hash: String,
    pub seed: u64,
    pub train: SplitSummary,
    pub validation: SplitSummary,
    pub test: SplitSummary,
}

pub const SUMMARY_FILE: &str = "summary.json";
