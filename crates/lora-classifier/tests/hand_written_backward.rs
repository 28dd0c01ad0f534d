//! The hand-written backward pass of a training step (`SequenceClassifier::train_grads`)
//! against candle's autograd over the same forward pass (`forward(Mode::Train)`, cross-entropy,
//! `backward`): the loss and the gradient of every LoRA matrix and of the head, each within
//! 1e-4 of the reference's largest element (f32), with dropout on (hidden, attention, LoRA),
//! padded rows and every LoRA B nonzero (a zero B would hide dA). On the tiny BERT and GPT-2
//! fixtures with LoRA on every linear layer and on the defaults, and at production size: the real
//! all-MiniLM-L6-v2 on 16 reviews × 128 tokens in f32 and with bf16 frozen weights (the
//! default on a CPU with AVX512-BF16; both paths on the same kernels).

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::loss::cross_entropy;
use common::{sixteen_reviews, values, Fixture};
use lora_classifier::{
    Checkpoint, Kernels, LoraBias, LoraSettings, Mode, SequenceClassifier, ALL_LINEAR,
};
use test_support::compare::{assert_close_relative, diff_of};

/// f32: the two passes differ by summation order only (measured ≤ 1.5e-6 relative).
const TOL: f64 = 1e-4;
/// bf16 frozen weights: the same kernels, but each layer's input gradient is rounded to bf16
/// before its GEMM, so an f32 difference of summation order in the last bit can move a value
/// to the next bf16 step (2⁻⁸ relative) and that carries down the layers (measured ≤ 5.3e-3,
/// at layer 0). A wrong gradient (no dropout mask, a lost branch) is off by far more (see
/// `the_comparison_sees_dropout`).
const BF16_TOL: f64 = 2e-2;

fn settings(targets: &[&str]) -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.2,
        bias: LoraBias::None,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        layer_norm: false,
        use_rslora: false,
    }
}

/// A fresh model with every lora_B set to values in ±0.05 derived from its name (PEFT starts
/// B at zero, which would leave dA zero and uncompared).
fn model(ckpt: &Checkpoint, lora: &LoraSettings, dtype: DType) -> SequenceClassifier {
    let mut m = SequenceClassifier::new(ckpt, Some(lora), 7, &Device::Cpu, dtype).unwrap();
    m.set_kernels(Kernels::Auto);
    for (name, var) in m.trainable() {
        if name.contains("lora_B") {
            let salt = ::common::hash::fnv1a(&name);
            let b: Vec<f32> = (0..var.elem_count() as u64)
                .map(|i| {
                    let h = ::common::hash::splitmix64(i ^ salt);
                    ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                })
                .collect();
            let b = Tensor::from_vec(b, var.shape(), &Device::Cpu).unwrap();
            var.set(&b).unwrap();
        }
    }
    m
}

/// Compares the hand-written pass with autograd on one training batch; returns the worst
/// relative error.
fn compare(m: &SequenceClassifier, batch: &(Tensor, Tensor, Tensor), tol: f64, what: &str) -> f64 {
    let (ids, mask, labels) = batch;
    let seed = 1234;
    let got = m
        .train_grads(ids, mask, labels, seed, 1.0)
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: the hand-written pass does not apply"));
    let logits = m
        .forward(ids, mask, Mode::Train { dropout_seed: seed })
        .unwrap();
    let loss = cross_entropy(&logits, labels).unwrap();
    let want = loss.backward().unwrap();
    assert_close_relative(
        &values(&got.loss),
        &values(&loss),
        TOL,
        &format!("{what}: loss"),
    );
    let trainable = m.trainable();
    assert_eq!(
        got.grads.len(),
        trainable.len(),
        "{what}: one gradient per trainable parameter"
    );
    let mut worst = 0f64;
    for (name, var) in &trainable {
        let g = got
            .grads
            .iter()
            .find(|(v, _)| v.as_tensor().id() == var.as_tensor().id())
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let reference = want.get(var).unwrap();
        let d = assert_close_relative(
            &values(&g.1),
            &values(reference),
            tol,
            &format!("{what}: gradient of {name}"),
        );
        // A gradient that is zero everywhere would compare as equal to itself: each moves
        // (but queries and keys with one key per row: a softmax over one key has no gradient).
        let one_key =
            ids.dim(1).unwrap() == 1 && (name.contains(".query.") || name.contains(".key."));
        assert!(
            d.scale > 0.0 || one_key,
            "{what}: the gradient of {name} is zero"
        );
        worst = worst.max(d.relative());
    }
    eprintln!("{what}: every gradient within {worst:.1e} relative of autograd's");
    worst
}

fn tiny_batch(f: &Fixture) -> (Tensor, Tensor, Tensor) {
    (f.ids.clone(), f.mask.clone(), f.labels.clone())
}

#[test]
fn equals_autograd_on_the_tiny_bert_with_lora_on_every_linear_layer() {
    let f = Fixture::load("bert-tiny-lora");
    let lengths: Vec<u32> = f.mask.sum(1).unwrap().to_vec1().unwrap();
    let n = f.mask.dim(1).unwrap() as u32;
    assert!(lengths.iter().any(|&l| l < n), "the batch has padded rows");
    for targets in [&[ALL_LINEAR][..], &[][..]] {
        let m = model(&f.ckpt, &settings(targets), DType::F32);
        let what = format!("tiny BERT, targets {targets:?}");
        compare(&m, &tiny_batch(&f), TOL, &what);
    }
}

/// One token per row (BERT's [CLS]-only last layer has no other row), and the loss scale that
/// gradient accumulation passes: the gradients scale with it, the loss does not.
#[test]
fn one_token_rows_and_the_loss_scale() {
    for name in ["bert-tiny-lora", "gpt2-tiny-lora"] {
        let f = Fixture::load(name);
        let m = model(&f.ckpt, &settings(&[ALL_LINEAR]), DType::F32);
        let first = |t: &Tensor| t.narrow(1, 0, 1).unwrap();
        let batch = (first(&f.ids), first(&f.mask), f.labels.clone());
        compare(&m, &batch, TOL, &format!("{name}, one token per row"));
        let (ids, mask, labels) = tiny_batch(&f);
        let whole = m
            .train_grads(&ids, &mask, &labels, 3, 1.0)
            .unwrap()
            .unwrap();
        let share = m
            .train_grads(&ids, &mask, &labels, 3, 0.25)
            .unwrap()
            .unwrap();
        assert_eq!(
            values(&whole.loss),
            values(&share.loss),
            "{name}: the loss is not scaled"
        );
        for ((_, a), (_, b)) in whole.grads.iter().zip(&share.grads) {
            let quarter: Vec<f32> = values(a).iter().map(|v| v * 0.25).collect();
            assert_close_relative(
                &values(b),
                &quarter,
                1e-6,
                &format!("{name}: scaled gradient"),
            );
        }
    }
}

/// Dropout is part of what is compared: a pass without it differs from autograd's with it.
#[test]
fn the_comparison_sees_dropout() {
    let f = Fixture::load("bert-tiny-lora");
    let m = model(&f.ckpt, &settings(&[ALL_LINEAR]), DType::F32);
    let (ids, mask, labels) = tiny_batch(&f);
    let got = m
        .train_grads(&ids, &mask, &labels, 1, 1.0)
        .unwrap()
        .unwrap();
    let other = m
        .train_grads(&ids, &mask, &labels, 2, 1.0)
        .unwrap()
        .unwrap();
    let moved = got
        .grads
        .iter()
        .zip(&other.grads)
        .map(|((_, a), (_, b))| diff_of(&values(a), &values(b), "seeds").relative())
        .fold(0f64, f64::max);
    assert!(
        moved > 100.0 * TOL,
        "another dropout seed moves the gradients by {moved:e}, far beyond the tolerance"
    );
}

/// Where the hand-written pass does not apply, the caller is told so (None) rather than given
/// the wrong gradients: composed kernels, a LoRA bias, a LayerNorm on the LoRA branch.
#[test]
fn says_where_it_does_not_apply() {
    let f = Fixture::load("bert-tiny-lora");
    let batch = tiny_batch(&f);
    let none = |m: &SequenceClassifier, what: &str| {
        let (ids, mask, labels) = &batch;
        let g = m.train_grads(ids, mask, labels, 1, 1.0).unwrap();
        assert!(g.is_none(), "{what}: the hand-written pass claims to apply");
    };
    let mut m = model(&f.ckpt, &settings(&[]), DType::F32);
    m.set_kernels(Kernels::Composed);
    none(&m, "composed kernels");
    let mut m = model(&f.ckpt, &settings(&[]), DType::F32);
    m.merge().unwrap();
    none(&m, "a merged model");
    for (bias, layer_norm) in [(LoraBias::All, false), (LoraBias::None, true)] {
        let s = LoraSettings {
            bias,
            layer_norm,
            ..settings(&[])
        };
        none(
            &model(&f.ckpt, &s, DType::F32),
            &format!("{bias:?}, layer_norm {layer_norm}"),
        );
    }
}

#[test]
fn equals_autograd_on_the_tiny_gpt2_with_lora_on_every_linear_layer() {
    let f = Fixture::load("gpt2-tiny-lora");
    for targets in [&[ALL_LINEAR][..], &[][..]] {
        let m = model(&f.ckpt, &settings(targets), DType::F32);
        let what = format!("tiny GPT-2, targets {targets:?}");
        compare(&m, &tiny_batch(&f), TOL, &what);
    }
}

fn minilm() -> Result<Checkpoint, String> {
    let dir = test_support::real_model(test_support::MINILM, true)?;
    Checkpoint::open(&dir).map_err(|e| format!("{e:#}"))
}

/// Production size, the pipeline's defaults (r 8, alpha 32, LoRA dropout 0.1, every linear
/// layer), f32 and bf16 frozen weights.
#[test]
fn equals_autograd_on_minilm_at_16_x_128() {
    let ckpt = test_support::require!(minilm());
    let batch = sixteen_reviews();
    let lora = LoraSettings {
        r: 8,
        alpha: 32.0,
        dropout: 0.1,
        ..settings(&[ALL_LINEAR])
    };
    for dtype in [DType::F32, DType::BF16] {
        let m = model(&ckpt, &lora, dtype);
        let tol = if dtype == DType::F32 { TOL } else { BF16_TOL };
        compare(
            &m,
            &batch,
            tol,
            &format!("MiniLM 16 × 128, {dtype:?} weights"),
        );
    }
}
