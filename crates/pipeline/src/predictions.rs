//! The evaluate artifacts that later stages read: `predictions.parquet`
//! (columns `id` string, `label` int64, `prob_positive` float64, `predicted`
//! int64) and `examples.json` (the config's example texts, classified).

use std::path::Path;

use anyhow::{bail, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

pub const PREDICTIONS_FILE: &str = "predictions.parquet";
pub const METRICS_FILE: &str = "metrics.json";
pub const REPORT_TEXT_FILE: &str = "classification_report.txt";
pub const EXAMPLES_FILE: &str = "examples.json";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    pub ids: Vec<String>,
    pub labels: Vec<u32>,
    pub prob_positive: Vec<f64>,
    pub predicted: Vec<u32>,
}

impl Predictions {
    pub fn write_parquet(&self, path: &Path) -> Result<()> {
        let n = self.ids.len();
        if [
            self.labels.len(),
            self.prob_positive.len(),
            self.predicted.len(),
        ] != [n, n, n]
        {
            bail!("predictions: columns of different lengths");
        }
        let as_i64 = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let mut df = DataFrame::new(
            n,
            vec![
                Column::new("id".into(), &self.ids),
                Column::new("label".into(), as_i64(&self.labels)),
                Column::new("prob_positive".into(), &self.prob_positive),
                Column::new("predicted".into(), as_i64(&self.predicted)),
            ],
        )?;
        crate::parquet::write(path, &mut df)
    }

    pub fn read_parquet(path: &Path) -> Result<Predictions> {
        let table = crate::parquet::Table::read(path, "evaluate")?;
        let col = |name: &str| table.column(name);
        let ints = |name: &str| -> Result<Vec<u32>> {
            Ok(col(name)?
                .i64()?
                .iter()
                .map(|v| v.unwrap_or(0) as u32)
                .collect())
        };
        Ok(Predictions {
            ids: col("id")?
                .str()?
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect(),
            labels: ints("label")?,
            prob_positive: col("prob_positive")?
                .f64()?
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect(),
            predicted: ints("predicted")?,
        })
    }
}

/// One classified example text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExamplePrediction {
    pub text: String,
    /// "Positive" or "Negative".
    pub label: String,
    /// Probability of the predicted label.
    pub probability: f64,
    pub prob_positive: f64,
}

impl ExamplePrediction {
    pub fn new(text: &str, prob_positive: f64, threshold: f64) -> Self {
        let positive = prob_positive >= threshold;
        Self {
            text: text.to_string(),
            label: if positive { "Positive" } else { "Negative" }.to_string(),
            probability: if positive {
                prob_positive
            } else {
                1.0 - prob_positive
            },
            prob_positive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PREDICTIONS_FILE);
        let p = Predictions {
            ids: vec!["test/1".into(), "test/2".into()],
            labels: vec![1, 0],
            prob_positive: vec![0.9, 0.25],
            predicted: vec![1, 0],
        };
        p.write_parquet(&path).unwrap();
        assert_eq!(Predictions::read_parquet(&path).unwrap(), p);
    }
}
