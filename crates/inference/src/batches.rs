//! Token rows in batches: the one place that cuts batches from padded rows and runs the model
//! over them, for training, validation and inference alike.

use anyhow::Result;
use candle_core::{Device, Tensor};
use lora_classifier::{Mode, SequenceClassifier};

/// Padded token rows: `input_ids` and `attention_mask` are `[n, max_len]`, row-major; `labels`
/// has one entry per row where they are known (empty for texts to classify).
#[derive(Debug, Clone, Copy)]
pub struct Examples<'a> {
    pub input_ids: &'a [u32],
    pub attention_mask: &'a [u32],
    pub labels: &'a [u32],
    pub max_len: usize,
}

impl Examples<'_> {
    pub fn len(&self) -> usize {
        self.input_ids.len() / self.max_len.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attended tokens of row i: up to its last attended one (at least 1).
    fn width(&self, i: usize) -> usize {
        let mask = &self.attention_mask[i * self.max_len..(i + 1) * self.max_len];
        mask.iter().rposition(|&m| m != 0).map_or(1, |p| p + 1)
    }

    /// Every row, shortest first (a stable sort: equal widths keep their order).
    pub fn by_length(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = (0..self.len()).collect();
        rows.sort_by_key(|&i| self.width(i));
        rows
    }

    /// The rows `rows` as [B, S] ids and mask. Padding is on the right and masked out as
    /// keys, so columns past the last attended token of every row change nothing: S stops
    /// there (at least 1).
    pub fn inputs(&self, rows: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let len = self.max_len;
        let width = rows.iter().map(|&i| self.width(i)).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for &i in rows {
            ids.extend_from_slice(&self.input_ids[i * len..i * len + width]);
            mask.extend_from_slice(&self.attention_mask[i * len..i * len + width]);
        }
        Ok((
            Tensor::from_vec(ids, (rows.len(), width), device)?,
            Tensor::from_vec(mask, (rows.len(), width), device)?,
        ))
    }

    /// The labels of `rows`, as a [B] tensor.
    pub fn labels(&self, rows: &[usize], device: &Device) -> Result<Tensor> {
        let labels: Vec<u32> = rows.iter().map(|&i| self.labels[i]).collect();
        Ok(Tensor::from_vec(labels, rows.len(), device)?)
    }
}

/// Runs `model` without dropout or autograd over every row, `batch_size` rows at a time,
/// handing each batch's rows (indices into `examples`) and [B, labels] logits to `each`.
///
/// Rows go in order of their attended length (ties in row order): a batch is as wide as its
/// longest row, so the shorter reviews are no longer padded to the longest of a random batch.
/// A row's logits do not depend on the rows batched with it.
pub fn infer(
    model: &SequenceClassifier,
    examples: &Examples,
    batch_size: usize,
    device: &Device,
    mut each: impl FnMut(&[usize], &Tensor) -> Result<()>,
) -> Result<()> {
    for rows in examples.by_length().chunks(batch_size.max(1)) {
        let (ids, mask) = examples.inputs(rows, device)?;
        let logits = model.forward(&ids, &mask, Mode::Inference)?;
        each(rows, &logits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stop_at_the_last_attended_column() {
        // Three rows of 4: attended lengths 2, 3 and 1.
        let ids = [1, 2, 0, 0, 3, 4, 5, 0, 6, 0, 0, 0];
        let mask = [1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0];
        let examples = Examples {
            input_ids: &ids,
            attention_mask: &mask,
            labels: &[0, 1, 1],
            max_len: 4,
        };
        assert_eq!(examples.len(), 3);
        let (i, m) = examples.inputs(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(i.to_vec2::<u32>().unwrap(), [[6, 0], [1, 2]]);
        assert_eq!(m.to_vec2::<u32>().unwrap(), [[1, 0], [1, 1]]);
        let (i, _) = examples.inputs(&[1], &Device::Cpu).unwrap();
        assert_eq!(i.to_vec2::<u32>().unwrap(), [[3, 4, 5]]);
        // A row with no attended token keeps one column.
        let none = Examples {
            attention_mask: &[0; 12],
            ..examples
        };
        assert_eq!(none.inputs(&[0], &Device::Cpu).unwrap().0.dims(), [1, 1]);
        let labels = examples.labels(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(labels.to_vec1::<u32>().unwrap(), [1, 0]);
    }

    #[test]
    fn rows_go_shortest_first_ties_in_row_order() {
        // Attended widths 2, 3, 1, 3, 2 (the third row's last attended column is 0).
        let mask = [1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0];
        let examples = Examples {
            input_ids: &[7; 15],
            attention_mask: &mask,
            labels: &[],
            max_len: 3,
        };
        assert_eq!(examples.by_length(), [2, 0, 4, 1, 3]);
    }

    /// Each row gets its own logits, whatever rows share its batch: those of a forward pass
    /// over that row alone.
    #[test]
    fn infer_hands_each_row_its_own_logits() {
        use candle_core::DType;
        use lora_classifier::{Checkpoint, SequenceClassifier};

        let ckpt = Checkpoint::open(&test_support::fixture("bert-tiny-lora/base")).unwrap();
        let model = SequenceClassifier::new(&ckpt, None, 1, &Device::Cpu, DType::F32).unwrap();
        let (n, len) = (11, 9);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for i in 0..n {
            let used = 2 + (i * 5) % 8;
            for j in 0..len {
                ids.push(if j < used {
                    100 + (i * 7 + j) as u32 % 50
                } else {
                    0
                });
                mask.push(u32::from(j < used));
            }
        }
        let examples = Examples {
            input_ids: &ids,
            attention_mask: &mask,
            labels: &[],
            max_len: len,
        };
        let mut got = vec![None; n];
        infer(&model, &examples, 3, &Device::Cpu, |rows, logits| {
            for (&i, row) in rows.iter().zip(logits.to_vec2::<f32>()?) {
                assert!(got[i].replace(row).is_none(), "row {i} classified twice");
            }
            Ok(())
        })
        .unwrap();
        for (i, row) in got.into_iter().enumerate() {
            let row = row.unwrap_or_else(|| panic!("row {i} never classified"));
            let (ids, mask) = examples.inputs(&[i], &Device::Cpu).unwrap();
            let alone = model.forward(&ids, &mask, Mode::Inference).unwrap();
            let alone = alone.to_vec2::<f32>().unwrap().remove(0);
            for (a, b) in row.iter().zip(&alone) {
                assert!((a - b).abs() < 1e-5, "row {i}: {row:?} vs alone {alone:?}");
            }
        }
    }
}
