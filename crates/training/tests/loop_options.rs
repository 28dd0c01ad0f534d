//! The loop's options: gradient accumulation gives the larger batch's result, `max_steps`
//! ends the run (and the schedule) at that step, and early stopping ends it when the
//! validation loss stops improving (`stops_early` on crafted histories, and a run).

use std::path::Path;

use candle_core::{DType, Device};
use lora_classifier::{Checkpoint, LoraBias, LoraSettings, SequenceClassifier};
use training::optim::OptimizerSettings;
use training::{
    stops_early, CheckpointStore, Examples, Record, RecordKind, ScheduleKind, Silent, TrainOutcome,
    TrainSettings,
};

/// The fixture's 4 rows, 4 times over: 16 rows.
struct Rows {
    ids: Vec<u32>,
    mask: Vec<u32>,
    labels: Vec<u32>,
    max_len: usize,
}

fn rows() -> Rows {
    let dir = test_support::fixture("bert-tiny-lora");
    let t = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let u32s = |k: &str| -> Vec<u32> {
        t[k].to_dtype(DType::U32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    Rows {
        ids: u32s("input_ids").repeat(4),
        mask: u32s("attention_mask").repeat(4),
        labels: u32s("labels").repeat(4),
        max_len: t["input_ids"].dims()[1],
    }
}

/// The tiny BERT with dropout off everywhere (with dropout, batches of 8 and 16 draw other
/// masks), a fresh LoRA on query/value.
fn model(tmp: &Path) -> SequenceClassifier {
    let base = test_support::fixture("bert-tiny-lora").join("base");
    let dir = tmp.join("no-dropout");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        base.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let lora = LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        bias: LoraBias::None,
        target_modules: vec![],
        layer_norm: false,
        use_rslora: false,
    };
    let ckpt = Checkpoint::open(&dir).unwrap();
    SequenceClassifier::new(&ckpt, Some(&lora), 3, &Device::Cpu, DType::F32).unwrap()
}

fn settings() -> TrainSettings {
    TrainSettings {
        seed: 1,
        optimizer: OptimizerSettings::adamw(0.9, 0.999, 1e-8, 0.01),
        learning_rate: 1e-2,
        schedule: ScheduleKind::Linear,
        step_size: 1,
        step_gamma: 1.0,
        warmup_steps: 0,
        warmup_ratio: 0.0,
        batch_size: 16,
        gradient_accumulation_steps: 1,
        epochs: 3,
        max_steps: None,
        early_stopping_patience: None,
        max_grad_norm: Some(1.0),
        eval_every_steps: None,
        checkpoint_every_steps: 1000,
        keep_best: false,
    }
}

/// Trains a fresh model with `settings`; the outcome and the trainable tensors after it.
fn run(settings: &TrainSettings) -> (TrainOutcome, Vec<Vec<f32>>) {
    let tmp = tempfile::tempdir().unwrap();
    let r = rows();
    let examples = Examples {
        input_ids: &r.ids,
        attention_mask: &r.mask,
        labels: &r.labels,
        max_len: r.max_len,
    };
    let mut m = model(tmp.path());
    let store = CheckpointStore::new(&tmp.path().join("checkpoints"), "test");
    let outcome = training::train(
        &mut m,
        &examples,
        &examples,
        settings,
        &Device::Cpu,
        &store,
        &mut Silent,
    )
    .unwrap();
    let tensors = m
        .trainable()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    (outcome, tensors)
}

/// max |a − b| over every tensor: as many tensors, each as long, all finite.
#[track_caller]
fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "as many tensors");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| test_support::compare::max_abs_diff(x, y, &format!("tensor {i}")) as f32)
        .fold(0.0, f32::max)
}

fn step_losses(o: &TrainOutcome) -> Vec<f64> {
    o.history
        .iter()
        .filter(|r| r.kind == RecordKind::Step)
        .map(|r| r.train_loss)
        .collect()
}

#[test]
fn two_accumulated_batches_of_8_equal_one_batch_of_16() {
    let (one, whole) = run(&settings());
    let (two, accumulated) = run(&TrainSettings {
        batch_size: 8,
        gradient_accumulation_steps: 2,
        ..settings()
    });
    assert_eq!(
        (one.steps, two.steps),
        (3, 3),
        "one optimizer step per epoch"
    );
    let d = max_diff(&whole, &accumulated);
    assert!(d < 1e-5, "parameters after 3 steps differ by {d:e}");
    for (a, b) in step_losses(&one).iter().zip(step_losses(&two)) {
        assert!((a - b).abs() < 1e-6, "loss {a} vs {b}");
    }
    assert!((one.last.loss - two.last.loss).abs() < 1e-6);
    // And the parameters did move: the comparison is not between two untrained models.
    let (_, untrained) = run(&TrainSettings {
        learning_rate: 1e-12,
        ..settings()
    });
    assert!(max_diff(&whole, &untrained) > 1e-3);
    // Batches of 8 without accumulation take two steps per epoch: another result.
    let (eight, separate) = run(&TrainSettings {
        batch_size: 8,
        ..settings()
    });
    assert_eq!(eight.steps, 6);
    assert!(max_diff(&whole, &separate) > 1e-4);
}

#[test]
fn max_steps_ends_the_run_and_the_schedule() {
    let s = TrainSettings {
        batch_size: 4,
        epochs: 1,
        max_steps: Some(6),
        ..settings()
    };
    let (o, _) = run(&s);
    assert_eq!(o.steps, 6, "6 steps: one epoch of 4, and 2 of the next");
    let lrs: Vec<f64> = o.history.iter().filter_map(|r| r.learning_rate).collect();
    let want: Vec<f64> = (0..6).map(|t| 1e-2 * (1.0 - t as f64 / 6.0)).collect();
    for (a, b) in lrs.iter().zip(&want) {
        assert!(
            (a - b).abs() < 1e-12,
            "lr {a} vs {b}: the schedule ends at max_steps"
        );
    }
    let epochs: Vec<(u32, u64)> = o
        .history
        .iter()
        .filter(|r| r.kind == RecordKind::Epoch)
        .map(|r| (r.epoch, r.step))
        .collect();
    assert_eq!(
        epochs,
        [(1, 4), (2, 6)],
        "the cut epoch is validated where it ends"
    );
}

fn validation(kind: RecordKind, step: u64, loss: f64) -> Record {
    Record {
        kind,
        epoch: 1,
        step,
        train_loss: 0.7,
        learning_rate: None,
        samples_per_s: None,
        val_loss: Some(loss),
        val_accuracy: Some(0.5),
    }
}

fn history(losses: &[f64]) -> Vec<Record> {
    let mut h = Vec::new();
    for (i, &loss) in losses.iter().enumerate() {
        let step = i as u64 + 1;
        h.push(Record {
            kind: RecordKind::Step,
            val_loss: None,
            val_accuracy: None,
            learning_rate: Some(1e-3),
            ..validation(RecordKind::Step, step, 0.0)
        });
        h.push(validation(RecordKind::Epoch, step, loss));
    }
    h
}

#[test]
fn early_stopping_on_crafted_histories() {
    // patience 2: two validations in a row without a lower loss than the best before them.
    assert!(!stops_early(&history(&[]), 2));
    assert!(!stops_early(&history(&[0.5]), 2));
    assert!(!stops_early(&history(&[0.5, 0.6]), 2));
    assert!(stops_early(&history(&[0.5, 0.6, 0.55]), 2));
    // An equal loss is no improvement (HF: threshold 0, strictly lower).
    assert!(stops_early(&history(&[0.5, 0.5, 0.5]), 2));
    // An improvement resets the count.
    assert!(!stops_early(&history(&[0.5, 0.6, 0.4, 0.45]), 2));
    assert!(stops_early(&history(&[0.5, 0.6, 0.4, 0.45, 0.41]), 2));
    // Not below the best before (0.4), though below the previous one (0.45).
    assert!(stops_early(&history(&[0.6, 0.4, 0.45, 0.41]), 2));
    assert!(!stops_early(&history(&[0.6, 0.4, 0.45, 0.41]), 3));
    // Mid-epoch validations count as HF's evaluations do.
    let mut h = history(&[0.5]);
    h.push(validation(RecordKind::Eval, 2, 0.7));
    assert!(!stops_early(&h, 2));
    h.push(validation(RecordKind::Eval, 3, 0.6));
    assert!(stops_early(&h, 2));
}

#[test]
fn early_stopping_ends_a_run_that_stops_improving() {
    // Learning rate 0 (AdamW's decay is lr × weight_decay, so 0 too): the validation loss
    // never changes, so never improves after the first validation. Validating after every
    // step, patience 2 stops the run at its third step, mid-epoch (4 steps per epoch).
    let s = TrainSettings {
        batch_size: 4,
        learning_rate: 0.0,
        eval_every_steps: Some(1),
        early_stopping_patience: Some(2),
        ..settings()
    };
    let (o, _) = run(&s);
    assert_eq!(o.steps, 3, "stopped after 3 of 12 steps");
    let kinds: Vec<(RecordKind, u64)> = o
        .history
        .iter()
        .filter(|r| r.kind != RecordKind::Step)
        .map(|r| (r.kind, r.step))
        .collect();
    assert_eq!(
        kinds,
        [
            (RecordKind::Eval, 1),
            (RecordKind::Eval, 2),
            (RecordKind::Epoch, 3)
        ],
        "the last validation closes the run's (cut) epoch"
    );
    assert_eq!(o.best_epoch, 1);
}
