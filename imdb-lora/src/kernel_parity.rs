//! The kernels a device runs (the fused CPU kernels, or the CUDA kernels and the frozen-weight
//! matmul) against candle's composed ops on the same device — the reference every
//! implementation is tested against — for one training step: logits, loss and the gradient of
//! every trainable tensor, by autograd and by the hand-written backward pass that train
//! runs, two AdamW updates (fused against composed, from the same gradients;
//! only where a fused AdamW runs, on a GPU: elsewhere both sides would be the same code), and the
//! merged model's inference logits. `imdb-lora check-kernels` and the kernel parity
//! tests both run [`compare`].

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use lora_classifier::{Checkpoint, Kernels, Mode, SequenceClassifier};
use rand::{Rng, SeedableRng};
use training::{Optimizer, OptimizerSettings};

use crate::models;

/// One tensor of the kernels' step against the composed ops' step.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// What is compared: `train logits`, `loss`, `grad <name>`, `adamw x2 <name>`, `merged
    /// inference logits`.
    pub check: String,
    /// max |got − want| over all elements (infinite where `got` is not finite).
    pub max_abs_err: f64,
    /// `max_abs_err` / max |want|.
    pub rel_err: f64,
    /// max |want|: a comparison of zeros with zeros checks nothing, so callers can tell.
    pub reference_scale: f64,
}

/// Largest `rel_err` of [`compare_int8`]: it measures quantization error, not the kernels
/// (their integer products are tested exactly): MiniLM on random ids gives 0.12 (16 × 128) to
/// 0.19 (4 × 64); a wrong scale or zero point gives errors of order one.
pub const INT8_TOLERANCE: f64 = 0.25;

/// Largest `rel_err` allowed: 1e-4 for f32 weights; 3e-2 for bf16/f16, where the kernels round
/// at other points than the composed ops (3e-2 is about 8 bf16 ulps of the largest value).
pub fn default_tolerance(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-4
    } else {
        3e-2
    }
}

/// max |a − b| and max |b| over all elements; a NaN or infinity on either side makes the
/// difference infinite (never ignored, as `f64::max` would ignore a NaN).
fn difference(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if a.len() != b.len() || a.is_empty() {
        bail!("{} vs {} elements", a.len(), b.len())
    }
    let (mut diff, mut scale) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        let d = if x.is_finite() && y.is_finite() {
            (x - y).abs()
        } else {
            f64::INFINITY
        };
        diff = diff.max(d);
        if y.is_finite() {
            scale = scale.max(y.abs());
        }
    }
    Ok((diff, scale))
}

/// The attention mask of `batch` rows of decreasing length (the first full, the last about
/// half): padding in every position range.
pub fn ragged_mask(batch: usize, seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<u32> = (0..batch)
        .flat_map(|i| {
            let len = seq - (i * seq / (2 * batch.max(1))).min(seq - 1);
            (0..seq).map(move |j| u32::from(j < len))
        })
        .collect();
    Ok(Tensor::from_vec(mask, (batch, seq), device)?)
}

/// One training step (dropout on), the AdamW updates and merged inference of `ckpt` + LoRA
/// (pipeline.yaml's defaults) on random ids [batch, seq] with a ragged mask, the device's
/// kernels against the composed ops; every comparison in order.
pub fn compare(
    ckpt: &Checkpoint,
    device: &Device,
    dtype: DType,
    batch: usize,
    seq: usize,
) -> Result<Vec<Comparison>> {
    if batch == 0 || seq == 0 {
        bail!("batch and seq must be at least 1 (got {batch} × {seq})")
    }
    let build = |kernels| -> Result<SequenceClassifier> {
        let mut m = SequenceClassifier::new(ckpt, Some(&models::lora()), 7, device, dtype)?;
        m.set_kernels(kernels);
        Ok(m)
    };
    let (mut tested, mut reference) = (build(Kernels::Auto)?, build(Kernels::Composed)?);
    // B starts at zero, which would leave every A gradient zero: give both models the same
    // random B so that every gradient is exercised.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for ((name, t), (_, r)) in tested.trainable().iter().zip(reference.trainable()) {
        if name.contains("lora_B") {
            let v: Vec<f32> = (0..t.elem_count())
                .map(|_| rng.random_range(-0.05..0.05))
                .collect();
            let b = Tensor::from_vec(v, t.shape(), device)?;
            t.set(&b)?;
            r.set(&b)?;
        }
    }
    let (ids, labels) = models::random_batch(ckpt.vocab_size(), batch, seq, 3, device)?;
    let mask = ragged_mask(batch, seq, device)?;

    let mut out = Vec::new();
    let mut record = |check: String, got: &Tensor, want: &Tensor| -> Result<()> {
        let (max_abs_err, reference_scale) =
            difference(got, want).with_context(|| check.clone())?;
        out.push(Comparison {
            check,
            max_abs_err,
            rel_err: max_abs_err / reference_scale.max(1e-30),
            reference_scale,
        });
        Ok(())
    };

    // Logits, loss and the trainable tensors' gradients, by autograd. Only these are kept: the
    // graph and the gradients of every intermediate are freed here (held to the end, they took
    // 3.5 GB at 16 × 128, each page faulted in fresh).
    let step = |m: &SequenceClassifier| -> Result<(Tensor, Tensor, Vec<Tensor>)> {
        let logits = m.forward(&ids, &mask, Mode::Train { dropout_seed: 5 })?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let grads = loss.backward()?;
        let trainable = m
            .trainable()
            .iter()
            .map(|(name, t)| {
                grads
                    .get(t)
                    .cloned()
                    .with_context(|| format!("no gradient for {name}"))
            })
            .collect::<Result<_>>()?;
        Ok((logits.detach(), loss.detach(), trainable))
    };
    let (logits, loss, grads) = step(&tested)?;
    let (ref_logits, ref_loss, ref_grads) = step(&reference)?;
    record("train logits".into(), &logits, &ref_logits)?;
    record("loss".into(), &loss, &ref_loss)?;
    for (((name, _), g), rg) in tested.trainable().iter().zip(&grads).zip(&ref_grads) {
        record(format!("grad {name}"), g, rg)?;
    }
    // The hand-written backward pass (what train runs) against the same reference.
    if let Some(hand) = tested.train_grads(&ids, &mask, &labels, 5, 1.0)? {
        record("hand-written loss".into(), &hand.loss, &ref_loss)?;
        for ((name, t), rg) in tested.trainable().iter().zip(&ref_grads) {
            let g = hand
                .grads
                .iter()
                .find(|(v, _)| v.as_tensor().id() == t.as_tensor().id())
                .with_context(|| format!("no hand-written gradient for {name}"))?;
            record(format!("hand-written grad {name}"), &g.1, rg)?;
        }
    }
    // One AdamW step per implementation, from the same parameters and gradients (the
    // reference model's): the fused CUDA update against the composed ops, twice (state too).
    // Where no fused update runs (the CPU), both sides would be the same code: not compared.
    let copies = |kernels| -> Result<(Vec<Var>, Optimizer)> {
        let vars: Vec<Var> = reference
            .trainable()
            .iter()
            .map(|(_, v)| Var::from_tensor(&v.as_tensor().copy()?))
            .collect::<candle_core::Result<_>>()?;
        let named = reference
            .trainable()
            .into_iter()
            .map(|(n, _)| n)
            .zip(vars.clone())
            .collect();
        let mut opt = Optimizer::new(OptimizerSettings::adamw(0.9, 0.999, 1e-8, 0.01), named)?;
        opt.set_kernels(kernels);
        Ok((vars, opt))
    };
    let (fused_vars, mut fused_opt) = copies(Kernels::Auto)?;
    if fused_opt.runs_fused() {
        let (composed_vars, mut composed_opt) = copies(Kernels::Composed)?;
        for _ in 0..2 {
            for (vars, opt) in [
                (&fused_vars, &mut fused_opt),
                (&composed_vars, &mut composed_opt),
            ] {
                let mut g = GradStore::default();
                for (v, rg) in vars.iter().zip(&ref_grads) {
                    g.insert(v.as_tensor(), rg.copy()?);
                }
                opt.step(&g, 5e-4)?;
            }
        }
        for ((f, c), (name, _)) in fused_vars
            .iter()
            .zip(&composed_vars)
            .zip(reference.trainable())
        {
            record(format!("adamw x2 {name}"), f.as_tensor(), c.as_tensor())?;
        }
    }
    tested.merge()?;
    reference.merge()?;
    let got = tested.forward(&ids, &mask, Mode::Inference)?;
    let want = reference.forward(&ids, &mask, Mode::Inference)?;
    record("merged inference logits".into(), &got, &want)?;
    Ok(out)
}

/// The merged model's inference with its frozen weights quantized to int8 (CPU) against the
/// composed f32 ops: `merged int8 inference logits`. The fresh head's logits are about 1e-2,
/// against which any quantization error is large, so both models get the same head with weights
/// in ±0.5: logits of order one, the scale a trained head's have.
pub fn compare_int8(ckpt: &Checkpoint, batch: usize, seq: usize) -> Result<Comparison> {
    let device = &Device::Cpu;
    let build = |kernels| -> Result<SequenceClassifier> {
        let mut m = SequenceClassifier::new(ckpt, Some(&models::lora()), 7, device, DType::F32)?;
        m.set_kernels(kernels);
        Ok(m)
    };
    let (mut tested, mut reference) = (build(Kernels::Auto)?, build(Kernels::Composed)?);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    for ((name, t), (_, r)) in tested.trainable().iter().zip(reference.trainable()) {
        let range = match name {
            n if n.contains("lora_B") => 0.05,
            n if n.contains("classifier") && n.ends_with("weight") => 0.5,
            _ => continue,
        };
        let v: Vec<f32> = (0..t.elem_count())
            .map(|_| rng.random_range(-range..range))
            .collect();
        let w = Tensor::from_vec(v, t.shape(), device)?;
        t.set(&w)?;
        r.set(&w)?;
    }
    let (ids, _) = models::random_batch(ckpt.vocab_size(), batch, seq, 3, device)?;
    let mask = ragged_mask(batch, seq, device)?;
    tested.merge()?;
    reference.merge()?;
    tested.quantize_int8()?;
    let got = tested.forward(&ids, &mask, Mode::Inference)?;
    let want = reference.forward(&ids, &mask, Mode::Inference)?;
    let (max_abs_err, reference_scale) = difference(&got, &want)?;
    Ok(Comparison {
        check: "merged int8 inference logits".into(),
        max_abs_err,
        rel_err: max_abs_err / reference_scale.max(1e-30),
        reference_scale,
    })
}
