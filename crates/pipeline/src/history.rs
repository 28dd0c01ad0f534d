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

/// A row: the training loop's record itself (`choices::HistoryRecord`, one type from the loop
/// through its checkpoints to this file).
pub use choices::HistoryRecord as HistoryRow;
/// A row's `kind`, spelled `step`, `eval` or `epoch`.
pub use choices::RecordKind as RowKind;

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
            k.parse::<RowKind>()
                .map_err(|err| table.bad_value("kind", row, err.to_string()))
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
