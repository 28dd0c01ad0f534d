//! Token rows in batches: the one place that cuts batches from padded rows and runs the model
//! over them, for training, validation and inference alike.

use std::ops::Range;

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

    /// The rows `rows` as [B, S] ids and mask. Padding is on the right and masked out as
    /// keys, so columns past the last attended token of every row change nothing: S stops
    /// there (at least 1).
    pub fn inputs(&self, rows: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let len = self.max_len;
        let width = rows
            .iter()
            .map(|&i| {
                let mask = &self.attention_mask[i * len..(i + 1) * len];
                mask.iter().rposition(|&m| m != 0).map_or(1, |p| p + 1)
            })
            .max()
            .unwrap_or(1);
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

/// Runs `model` without dropout or autograd over every row in order, `batch_size` rows at a
/// time, handing each batch's row range and [B, labels] logits to `each`.
pub fn infer(
    model: &SequenceClassifier,
    examples: &Examples,
    batch_size: usize,
    device: &Device,
    mut each: impl FnMut(Range<usize>, &Tensor) -> Result<()>,
) -> Result<()> {
    let n = examples.len();
    for start in (0..n).step_by(batch_size.max(1)) {
        let range = start..(start + batch_size.max(1)).min(n);
        let rows: Vec<usize> = range.clone().collect();
        let (ids, mask) = examples.inputs(&rows, device)?;
        let logits = model.forward(&ids, &mask, Mode::Inference)?;
        each(range, &logits)?;
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
}
