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
/// The validation split's, with `evaluate.validation`.
pub const VALIDATION_PREDICTIONS_FILE: &str = "validation_predictions.parquet";
pub const VALIDATION_METRICS_FILE: &str = "validation_metrics.json";
pub const VALIDATION_REPORT_TEXT_FILE: &str = "validation_classification_report.txt";

/// The predictions, metrics and report files of a split.
pub fn split_files(split: crate::Split) -> [&'static str; 3] {
    match split {
        crate::Split::Validation => [
            VALIDATION_PREDICTIONS_FILE,
            VALIDATION_METRICS_FILE,
            VALIDATION_REPORT_TEXT_FILE,
        ],
        _ => [PREDICTIONS_FILE, METRICS_FILE, REPORT_TEXT_FILE],
    }
}

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

    /// Reads predictions written by [`Predictions::write_parquet`]: no nulls, labels and
    /// predictions 0 or 1, probabilities in [0, 1].
    pub fn read_parquet(path: &Path) -> Result<Predictions> {
        let table = crate::parquet::Table::read(path, "evaluate")?;
        let binary = |name: &str| -> Result<Vec<u32>> {
            table
                .i64s(name)?
                .into_iter()
                .enumerate()
                .map(|(row, v)| match v {
                    0 | 1 => Ok(v as u32),
                    other => Err(table.bad_value(name, row, format!("{other} is not 0 or 1"))),
                })
                .collect()
        };
        let prob_positive = table.f64s("prob_positive")?;
        if let Some(row) = prob_positive.iter().position(|p| !(0.0..=1.0).contains(p)) {
            let p = prob_positive[row];
            return Err(table.bad_value(
                "prob_positive",
                row,
                format!("{p} is not a probability in [0, 1]"),
            ));
        }
        Ok(Predictions {
            ids: table.strings("id")?,
            labels: binary("label")?,
            prob_positive,
            predicted: binary("predicted")?,
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

    #[test]
    fn nulls_and_impossible_values_name_the_file_column_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PREDICTIONS_FILE);
        let f = path.display();
        let id = Column::new("id".into(), ["a", "b"]);
        let ints = |name: &str, v: Vec<Option<i64>>| Column::new(name.into(), v);
        let probs = |v: Vec<Option<f64>>| Column::new("prob_positive".into(), v);
        let cases = [
            (
                vec![
                    Column::new("id".into(), [Some("a"), None]),
                    ints("label", vec![Some(1), Some(0)]),
                    probs(vec![Some(0.9), Some(0.1)]),
                    ints("predicted", vec![Some(1), Some(0)]),
                ],
                format!("{f}: column `id` is null at row 1, expected a value in every row"),
            ),
            (
                vec![
                    id.clone(),
                    ints("label", vec![None, Some(0)]),
                    probs(vec![Some(0.9), Some(0.1)]),
                    ints("predicted", vec![Some(1), Some(0)]),
                ],
                format!("{f}: column `label` is null at row 0, expected a value in every row"),
            ),
            (
                vec![
                    id.clone(),
                    ints("label", vec![Some(1), Some(0)]),
                    probs(vec![Some(0.9), None]),
                    ints("predicted", vec![Some(1), Some(0)]),
                ],
                format!(
                    "{f}: column `prob_positive` is null at row 1, expected a value in every row"
                ),
            ),
            (
                vec![
                    id.clone(),
                    ints("label", vec![Some(1), Some(0)]),
                    probs(vec![Some(f64::NAN), Some(0.1)]),
                    ints("predicted", vec![Some(1), Some(0)]),
                ],
                format!("{f}: column `prob_positive`, row 0: NaN is not a probability in [0, 1]"),
            ),
            (
                vec![
                    id.clone(),
                    ints("label", vec![Some(1), Some(0)]),
                    probs(vec![Some(0.9), Some(0.1)]),
                    ints("predicted", vec![Some(1), Some(-1)]),
                ],
                format!("{f}: column `predicted`, row 1: -1 is not 0 or 1"),
            ),
        ];
        for (columns, message) in cases {
            let mut df = DataFrame::new(2, columns).unwrap();
            crate::parquet::write(&path, &mut df).unwrap();
            let err = format!("{:#}", Predictions::read_parquet(&path).unwrap_err());
            assert_eq!(err, message);
        }
    }
}
