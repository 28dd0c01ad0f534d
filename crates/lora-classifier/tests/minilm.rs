//! The real all-MiniLM-L6-v2 (no `bert.` prefix, no head): a fresh seeded head, finite logits.
//! Found through the HF cache; skipped (with a printed reason) where it cannot be had.

mod common;

use candle_core::{DType, Device, Tensor};
use lora_classifier::{Checkpoint, LoraBias, LoraSettings, Mode, SequenceClassifier};

#[test]
fn fresh_head_on_minilm() {
    let dir = test_support::require!(test_support::real_model(test_support::MINILM, true));
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert!(!ckpt.has_head());
    assert_eq!(
        ckpt.name_or_path(),
        "sentence-transformers/all-MiniLM-L6-v2"
    );
    let s = LoraSettings {
        r: 8,
        alpha: 32.0,
        dropout: 0.1,
        bias: LoraBias::None,
        target_modules: vec![],
        layer_norm: false,
        use_rslora: false,
    };
    let dev = Device::Cpu;
    let m = SequenceClassifier::new(&ckpt, Some(&s), 42, &dev, DType::F32).unwrap();
    // PEFT 0.21.2 on the same model: print_trainable_parameters().
    assert_eq!(
        m.parameter_counts().to_string(),
        "trainable params: 74,498 || all params: 22,788,484 || trainable%: 0.3269"
    );
    let names: Vec<_> = m.trainable().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names[0],
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
    );
    let ids = Tensor::new(
        &[
            [101u32, 1037, 6919, 2143, 102, 0, 0, 0],
            [101, 1996, 5409, 3185, 2412, 1012, 2023, 102],
        ],
        &dev,
    )
    .unwrap();
    let mask = ids.ne(0u32).unwrap().to_dtype(DType::U32).unwrap();
    let logits = m.forward(&ids, &mask, Mode::Eval).unwrap();
    assert_eq!(logits.dims(), [2, 2]);
    let v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
    // The head is seeded: the same seed gives the same head, another seed another one.
    let again = SequenceClassifier::new(&ckpt, Some(&s), 42, &dev, DType::F32).unwrap();
    let other = SequenceClassifier::new(&ckpt, Some(&s), 43, &dev, DType::F32).unwrap();
    let l2 = again.forward(&ids, &mask, Mode::Inference).unwrap();
    let l3 = other.forward(&ids, &mask, Mode::Inference).unwrap();
    assert_eq!(common::max_diff(&logits, &l2), 0.0);
    assert!(common::max_diff(&logits, &l3) > 1e-6);
    // Train mode works (dropout on) and gives finite logits.
    let t = m
        .forward(&ids, &mask, Mode::Train { dropout_seed: 1 })
        .unwrap();
    assert!(t
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
}
