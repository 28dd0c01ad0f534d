//! What a run records as it goes: one [`Record`] per optimizer step, per mid-epoch validation
//! and per epoch end. The loop derives the best epoch and each epoch's mean loss from it, a
//! checkpoint keeps it, and the caller gets it back (the train stage writes it as an artifact).
//!
//! The record is `choices::HistoryRecord`, the one type of a history record from the loop to
//! `history.parquet` (the pipeline's `history::HistoryRow` is the same type).

pub use choices::{HistoryRecord as Record, RecordKind};

/// The epoch records' best (lowest validation loss, the earliest on ties) and last.
pub fn best_and_last(history: &[Record]) -> Option<(&Record, &Record)> {
    let epochs: Vec<&Record> = history
        .iter()
        .filter(|r| r.kind == RecordKind::Epoch)
        .collect();
    let last = *epochs.last()?;
    let best = epochs
        .iter()
        .filter(|r| r.val_loss.is_some_and(f64::is_finite))
        .fold(None::<&Record>, |best, r| match best {
            Some(b) if b.val_loss <= r.val_loss => Some(b),
            _ => Some(r),
        })
        .unwrap_or(last);
    Some((best, last))
}

/// Mean step loss of `epoch` (1-based) so far.
pub fn epoch_mean_loss(history: &[Record], epoch: u32) -> f64 {
    let (sum, n) = history
        .iter()
        .filter(|r| r.kind == RecordKind::Step && r.epoch == epoch)
        .fold((0f64, 0usize), |(s, n), r| (s + r.train_loss, n + 1));
    sum / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: RecordKind, epoch: u32, train_loss: f64, val_loss: Option<f64>) -> Record {
        Record {
            kind,
            epoch,
            step: 0,
            train_loss,
            learning_rate: None,
            samples_per_s: None,
            val_loss,
            val_accuracy: None,
        }
    }

    #[test]
    fn the_best_epoch_is_the_earliest_lowest_validation_loss() {
        let history = vec![
            record(RecordKind::Step, 1, 1.0, None),
            record(RecordKind::Step, 1, 0.5, None),
            record(RecordKind::Epoch, 1, 0.75, Some(0.4)),
            record(RecordKind::Eval, 2, 0.3, Some(0.1)),
            record(RecordKind::Epoch, 2, 0.3, Some(0.4)),
            record(RecordKind::Epoch, 3, 0.2, Some(0.5)),
        ];
        let (best, last) = best_and_last(&history).unwrap();
        assert_eq!((best.epoch, last.epoch), (1, 3));
        assert_eq!(epoch_mean_loss(&history, 1), 0.75);
        assert_eq!(epoch_mean_loss(&history, 4), 0.0);
        assert!(best_and_last(&history[..2]).is_none());
    }
}
