//! Training moves what it should and nothing else (issue #28): after a few optimizer steps of
//! `training::train` on a fresh LoRA model, built as the train stage builds it, every
//! trainable tensor (each `lora_A`, each `lora_B`, the head) differs from its initial value,
//! every `lora_B` of the saved adapter is non-zero, and every frozen weight of the model is
//! bit-identical to the checkpoint's. The learning tests would pass with a trainer that
//! optimised only the head; this one names each tensor that did not move.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use lora_classifier::{
    Checkpoint, ExportDtype, ExportOptions, LoraBias, LoraSettings, SequenceClassifier, Truncation,
};
use test_support::compare::{diff_of, max_abs_diff};
use training::{
    CheckpointStore, Examples, OptimizerSettings, ScheduleKind, Silent, TrainOutcome, TrainSettings,
};

/// The adapter file `save_adapter` writes (PEFT's name).
const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn var_values(v: &Var) -> Vec<f32> {
    values(v.as_tensor())
}

/// The fixture's 4 rows twice over: 8 rows, 2 optimizer steps per epoch in batches of 4.
struct Rows {
    ids: Vec<u32>,
    mask: Vec<u32>,
    labels: Vec<u32>,
    max_len: usize,
}

fn rows(fixture: &Path) -> Rows {
    let t =
        candle_core::safetensors::load(fixture.join("expected.safetensors"), &Device::Cpu).unwrap();
    let u32s = |k: &str| -> Vec<u32> {
        t[k].to_dtype(DType::U32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    Rows {
        ids: u32s("input_ids").repeat(2),
        mask: u32s("attention_mask").repeat(2),
        labels: u32s("labels").repeat(2),
        max_len: t["input_ids"].dims()[1],
    }
}

/// pipeline.yaml's `lora:` section (r 8, alpha 32, dropout 0.1, the architecture's default
/// targets: BERT query/value, GPT-2 c_attn).
fn lora() -> LoraSettings {
    LoraSettings {
        r: 8,
        alpha: 32.0,
        dropout: 0.1,
        bias: LoraBias::None,
        target_modules: vec![],
        layer_norm: false,
        use_rslora: false,
    }
}

/// pipeline.yaml's `training:` section, cut to 2 epochs of 2 steps, except for the weight
/// decay: without it a tensor moves only through its gradient, so a moved `lora_A` is one that
/// a gradient reached (AdamW's decay alone would move every tensor it is applied to). At the
/// first step `lora_A`'s gradient is 0 (lora_B = 0); from the second on it is not.
fn settings() -> TrainSettings {
    TrainSettings {
        seed: 42,
        optimizer: OptimizerSettings::adamw(0.9, 0.999, 1e-8, 0.0),
        learning_rate: 5e-4,
        schedule: ScheduleKind::Linear,
        step_size: 100,
        step_gamma: 0.5,
        warmup_steps: 0,
        warmup_ratio: 0.0,
        batch_size: 4,
        gradient_accumulation_steps: 1,
        epochs: 2,
        max_steps: None,
        early_stopping_patience: None,
        max_grad_norm: None,
        eval_every_steps: None,
        checkpoint_every_steps: 50,
        // pipeline.yaml's `keep: best`: the kept adapter is a restored one.
        keep_best: true,
    }
}

/// Trains a fresh LoRA model on `fixture`'s base checkpoint and checks what moved.
/// `lora_modules`: how many layers the default targets hit.
fn trains_lora_and_only_lora(fixture: &str, lora_modules: usize) {
    let dir = test_support::fixture(fixture);
    let base = dir.join("base");
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(&base).unwrap();
    // As the train stage builds it (f32 frozen weights: the train stage's choice on a CPU
    // without AVX512-BF16, and the one whose weights compare exactly with the checkpoint's).
    let mut model =
        SequenceClassifier::new(&ckpt, Some(&lora()), 42, &Device::Cpu, DType::F32).unwrap();
    let trainable = model.trainable();
    let initial: Vec<Vec<f32>> = trainable.iter().map(|(_, v)| var_values(v)).collect();
    let is_lora = |name: &str, which: &str| name.contains(&format!(".{which}."));
    let count = |which: &str| trainable.iter().filter(|(n, _)| is_lora(n, which)).count();
    assert_eq!(
        (count("lora_A"), count("lora_B")),
        (lora_modules, lora_modules),
        "{fixture}: LoRA tensors of the fresh model: {:?}",
        trainable.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    // PEFT's default init: lora_B = 0 (so that a fresh adapter changes nothing), lora_A random.
    for ((name, _), init) in trainable.iter().zip(&initial) {
        let largest = max_abs_diff(init, &vec![0.0; init.len()], name);
        if is_lora(name, "lora_B") {
            assert_eq!(largest, 0.0, "{fixture}: fresh {name} is not 0");
        } else if is_lora(name, "lora_A") {
            assert!(largest > 0.0, "{fixture}: fresh {name} is all 0");
        }
    }

    let r = rows(&dir);
    let examples = Examples {
        input_ids: &r.ids,
        attention_mask: &r.mask,
        labels: &r.labels,
        max_len: r.max_len,
    };
    let store = CheckpointStore::new(&tmp.path().join("checkpoints"), "moves test");
    let started = std::time::Instant::now();
    let outcome: TrainOutcome = training::train(
        &mut model,
        &examples,
        &examples,
        &settings(),
        &Device::Cpu,
        &store,
        &mut Silent,
    )
    .unwrap();
    eprintln!(
        "{fixture}: {} steps in {:.2?}, kept epoch {}",
        outcome.steps,
        started.elapsed(),
        outcome.best_epoch
    );
    assert_eq!(outcome.steps, 4, "{fixture}: 2 epochs of 2 steps");

    // 1. Every trainable tensor moved; each one that did not is named. AdamW moves an element
    // that a gradient reaches by about the learning rate per step (its update is m̂/√v̂ ≈ ±1),
    // so a tenth of one step's rate tells a trained tensor from one moved by rounding alone.
    // Measured: lora_A ≥ 6.0e-4 (3 steps with a gradient), lora_B and the head ≥ 1.2e-3.
    let min_move = settings().learning_rate / 10.0;
    let trained: Vec<Vec<f32>> = trainable.iter().map(|(_, v)| var_values(v)).collect();
    let mut unmoved = Vec::new();
    let mut smallest = f64::INFINITY;
    for (((name, _), before), after) in trainable.iter().zip(&initial).zip(&trained) {
        let moved = max_abs_diff(after, before, name);
        smallest = smallest.min(moved);
        if moved < min_move {
            unmoved.push(format!("{name} (max |change| {moved:e})"));
        }
    }
    eprintln!("{fixture}: every trainable tensor moved by at least {smallest:e} somewhere");
    assert!(
        unmoved.is_empty(),
        "{fixture}: {} of {} trainable tensors did not move (by {min_move:e} or more) in {} \
         optimizer steps: {unmoved:#?}",
        unmoved.len(),
        trainable.len(),
        outcome.steps
    );

    // 2. The adapter as the train stage saves it holds the trained tensors, lora_B non-zero.
    let adapter = tmp.path().join("adapter");
    model.save_adapter(&adapter).unwrap();
    let saved =
        candle_core::safetensors::load(adapter.join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
    assert_eq!(
        saved.len(),
        trainable.len(),
        "{fixture}: the adapter's tensors: {:?}",
        saved.keys().collect::<Vec<_>>()
    );
    let (mut zero_b, mut not_trained) = (Vec::new(), Vec::new());
    for ((name, _), want) in trainable.iter().zip(&trained) {
        // PEFT's saved name: the in-memory one without the adapter name.
        let key = name
            .replace(".modules_to_save.default.", ".")
            .replace(".default.", ".");
        let got = values(
            saved
                .get(&key)
                .unwrap_or_else(|| panic!("{fixture}: the adapter has no {key} (for {name})")),
        );
        if is_lora(&key, "lora_B") && max_abs_diff(&got, &vec![0.0; got.len()], &key) == 0.0 {
            zero_b.push(key.clone());
        }
        let d = diff_of(&got, want, &key);
        if d.max_abs != 0.0 {
            not_trained.push(format!("{key}: {d}"));
        }
    }
    assert!(
        zero_b.is_empty(),
        "{fixture}: {} of {lora_modules} lora_B tensors of the saved adapter are all 0: {zero_b:#?}",
        zero_b.len()
    );
    assert!(
        not_trained.is_empty(),
        "{fixture}: saved tensors that are not the trained ones (got: saved, expected: trained): \
         {not_trained:#?}"
    );

    // 3. The frozen weights are the checkpoint's. The model shows them through its export
    // (every tensor of the body by HF's name, the LoRA update s·B·A added): with every lora_B
    // set to 0 the update is exactly 0, so a LoRA layer's exported weight is its frozen one.
    for (name, var) in &trainable {
        if is_lora(name, "lora_B") {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
    }
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let options = ExportOptions {
        dtype: ExportDtype::F32,
        max_len: r.max_len,
        truncation: Truncation::Head,
    };
    model.write_export(&ckpt, &export, options).unwrap();
    let held: HashMap<String, Tensor> =
        candle_core::safetensors::load(export.join("model.safetensors"), &Device::Cpu).unwrap();
    let original: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    // The head is trained (PEFT's modules_to_save); everything else is frozen.
    let head = |name: &str| name.starts_with("classifier.") || name.starts_with("score.");
    let mut changed = Vec::new();
    for (name, want) in original.iter().filter(|(n, _)| !head(n)) {
        let got = held
            .get(name)
            .unwrap_or_else(|| panic!("{fixture}: the model holds no {name}"));
        assert_eq!(got.dims(), want.dims(), "{fixture}: {name}");
        // Equal values with none non-finite (diff_of fails on a NaN) are equal bits, but for
        // the sign of a zero.
        let d = diff_of(&values(got), &values(want), name);
        if d.max_abs != 0.0 {
            changed.push(format!("{name}: {d}"));
        }
    }
    assert!(
        changed.is_empty(),
        "{fixture}: frozen weights differ from the checkpoint's after training: {changed:#?}"
    );
    let extra: Vec<&String> = held.keys().filter(|n| !original.contains_key(*n)).collect();
    assert!(
        extra.is_empty(),
        "{fixture}: not in the checkpoint: {extra:?}"
    );
}

/// Tiny BERT: LoRA on query and value of 2 layers, the head `classifier.*`.
#[test]
fn bert_training_moves_every_lora_tensor_and_no_frozen_weight() {
    trains_lora_and_only_lora("bert-tiny-lora", 4);
}

/// Tiny GPT-2: LoRA on c_attn of 2 layers, the head `score.weight`.
#[test]
fn gpt2_training_moves_every_lora_tensor_and_no_frozen_weight() {
    trains_lora_and_only_lora("gpt2-tiny-lora", 2);
}
