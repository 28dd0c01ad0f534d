//! The training history artifact: `train/history.parquet`.
//!
//! One row per event, in the order they happened:
//! - `step`: one optimizer step. `train_loss` is that batch's mean loss, `learning_rate` the
//!   rate the step ran with, `samples_per_s` its throughput.
//! - `eval`: a mid-epoch validation (`training.eval_every_steps`). `train_loss` is the mean
//!   step loss of the epoch so far.
//! - `epoch`: the end of an epoch. `train_loss` is the mean step loss of the epoch,
//!   `val_loss`/`val_accuracy` the validation after it.
//!
//! `epoch` counts from 1; `step` is the number of optimizer steps done so far (1 for the
//! first step), so an `epoch` or `eval` row has the step it was measured after.
//!
//! Columns: `kind` (string), `epoch` (u32), `step` (u64), `train_loss` (f64), and the f64
//! columns `learning_rate`, `samples_per_s`, `val_loss`, `val_accuracy`, null where a kind
//! has no value.

use std::path::Path;

use anyhow::Result;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    Step,
    Epoch,
    /// A validation in the middle of an epoch.
    Eval,
}

impl RowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RowKind::Step => "step",
            RowKind::Epoch => "epoch",
            RowKind::Eval => "eval",
        }
    }

    pub fn parse(text: &str) -> Option<RowKind> {
        [RowKind::Step, RowKind::Epoch, RowKind::Eval]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub kind: RowKind,
    pub epoch: u32,
    pub step: u64,
    pub train_loss: f64,
    pub learning_rate: Option<f64>,
    pub samples_per_s: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

pub const HISTORY_FILE: &str = "history.parquet";

/// Writes the rows (atomically).
pub fn write_parquet(rows: &[HistoryRow], path: &Path) -> Result<()> {
    let f64s = |f: fn(&HistoryRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    let mut df = DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "kind".into(),
                rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "epoch".into(),
                rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            ),
            Column::new(
                "step".into(),
                rows.iter().map(|r| r.step).collect::<Vec<_>>(),
            ),
            Column::new(
                "train_loss".into(),
                rows.iter().map(|r| r.train_loss).collect::<Vec<_>>(),
            ),
            Column::new("learning_rate".into(), f64s(|r| r.learning_rate)),
            Column::new("samples_per_s".into(), f64s(|r| r.samples_per_s)),
            Column::new("val_loss".into(), f64s(|r| r.val_loss)),
            Column::new("val_accuracy".into(), f64s(|r| r.val_accuracy)),
        ],
    )?;
    crate::parquet::write(path, &mut df)
}

/// Reads rows written by [`write_parquet`].
pub fn read_parquet(path: &Path) -> Result<Vec<HistoryRow>> {
    let table = crate::parquet::Table::read(path, "train")?;
    let kinds = table
        .strings("kind")?
        .into_iter()
        .enumerate()
        .map(|(row, k)| {
            RowKind::parse(&k).ok_or_else(|| {
                table.bad_value(
                    "kind",
                    row,
                    format!("unknown row kind {k:?} (expected step, epoch or eval)"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (epochs, steps, losses) = (
        table.u32s("epoch")?,
        table.u64s("step")?,
        table.f64s("train_loss")?,
    );
    let (lrs, sps) = (
        table.opt_f64s("learning_rate")?,
        table.opt_f64s("samples_per_s")?,
    );
    let (vl, va) = (table.opt_f64s("val_loss")?, table.opt_f64s("val_accuracy")?);
    Ok((0..table.height())
        .map(|i| HistoryRow {
            kind: kinds[i],
            epoch: epochs[i],
            step: steps[i],
            train_loss: losses[i],
            learning_rate: lrs[i],
            samples_per_s: sps[i],
            val_loss: vl[i],
            val_accuracy: va[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        let rows = vec![
            HistoryRow {
                kind: RowKind::Step,
                epoch: 1,
                step: 1,
                train_loss: 0.69,
                learning_rate: Some(5e-4),
                samples_per_s: Some(12.5),
                val_loss: None,
                val_accuracy: None,
            },
            HistoryRow {
                kind: RowKind::Epoch,
                epoch: 1,
                step: 1,
                train_loss: 0.69,
                learning_rate: None,
                samples_per_s: None,
                val_loss: Some(0.6),
                val_accuracy: Some(0.75),
            },
        ];
        write_parquet(&rows, &path).unwrap();
        assert_eq!(read_parquet(&path).unwrap(), rows);
        write_parquet(&[], &path).unwrap();
        assert!(read_parquet(&path).unwrap().is_empty());
    }
}
