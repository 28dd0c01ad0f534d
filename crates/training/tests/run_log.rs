//! The JSON-lines log while a run trains: read from disk by an observer in the middle of the
//! run, each step's and each validation's line is already there, with HF Trainer's names.
//! And validation reports its progress as it goes.

use std::path::Path;

use candle_core::{DType, Device};
use lora_classifier::{Checkpoint, SequenceClassifier};
use serde_json::Value;
use training::optim::OptimizerSettings;
use training::{CheckpointStore, Event, Examples, JsonLog, Observer, ScheduleKind, TrainSettings};

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Forwards every event to the log, then checks the file as a `tail -f` would see it.
struct Reader {
    log: JsonLog,
    checked_steps: u64,
    checked_validations: u64,
    /// The last `Validating` event's (done, total).
    validating: Option<(u64, u64)>,
}

impl Observer for Reader {
    fn on(&mut self, event: Event<'_>) {
        self.log.record(&event);
        let on_disk = lines(self.log.path());
        match event {
            Event::Step(r) => {
                let last = on_disk.last().expect("a line per step, written at once");
                assert_eq!(last["step"].as_u64(), Some(r.step));
                assert_eq!(last["loss"].as_f64(), Some(r.train_loss));
                assert_eq!(last["learning_rate"].as_f64(), r.learning_rate);
                self.checked_steps += 1;
            }
            Event::Validating { done, total } => {
                let before = self.validating.filter(|(d, t)| d < t).map_or(0, |(d, _)| d);
                assert!(
                    before < done && done <= total,
                    "{before} → {done} of {total}"
                );
                self.validating = Some((done, total));
            }
            Event::Validated(r) => {
                // Progress came batch by batch (2 rows each) up to all 4 rows.
                assert_eq!(self.validating.take(), Some((4, 4)));
                let last = on_disk.last().unwrap();
                assert_eq!(last["eval_loss"].as_f64(), r.val_loss);
                assert_eq!(last["eval_accuracy"].as_f64(), r.val_accuracy);
                // Two steps per epoch here: HF's fractional epoch.
                assert_eq!(last["epoch"].as_f64(), Some(r.step as f64 / 2.0));
                self.checked_validations += 1;
            }
            _ => {}
        }
    }
}

#[test]
fn log_lines_appear_while_the_run_trains() {
    let dir = test_support::fixture("bert-tiny-lora");
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let u32s = |k: &str| -> Vec<u32> {
        expected[k]
            .to_dtype(DType::U32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (ids, mask, labels) = (u32s("input_ids"), u32s("attention_mask"), u32s("labels"));
    let max_len = expected["input_ids"].dims()[1];
    let examples = Examples {
        input_ids: &ids,
        attention_mask: &mask,
        labels: &labels,
        max_len,
    };
    let ckpt = Checkpoint::open(&dir.join("base")).unwrap();
    let mut model =
        SequenceClassifier::load_adapter(&ckpt, &dir.join("adapter"), &Device::Cpu, DType::F32)
            .unwrap();
    let settings = TrainSettings {
        seed: 1,
        optimizer: OptimizerSettings::adamw(0.9, 0.999, 1e-8, 0.01),
        learning_rate: 1e-3,
        schedule: ScheduleKind::Linear,
        step_size: 1,
        step_gamma: 1.0,
        warmup_steps: 0,
        warmup_ratio: 0.0,
        batch_size: 2,
        gradient_accumulation_steps: 1,
        epochs: 2,
        max_steps: None,
        early_stopping_patience: None,
        max_grad_norm: None,
        eval_every_steps: Some(1),
        checkpoint_every_steps: 100,
        keep_best: false,
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(&tmp.path().join("checkpoints"), "test");
    let path = tmp.path().join("checkpoints").join(training::LOG_FILE);
    let mut reader = Reader {
        log: JsonLog::new(&path),
        checked_steps: 0,
        checked_validations: 0,
        validating: None,
    };
    let outcome = training::train(
        &mut model,
        &examples,
        &examples,
        &settings,
        &Device::Cpu,
        &store,
        &mut reader,
    )
    .unwrap();
    // 4 rows in batches of 2, 2 epochs: 4 steps; a validation after each (mid-epoch ones and
    // the epoch ends).
    assert_eq!((reader.checked_steps, reader.checked_validations), (4, 4));
    let all = lines(&path);
    assert_eq!(all.len(), outcome.history.len());
    let epochs: Vec<f64> = all.iter().map(|v| v["epoch"].as_f64().unwrap()).collect();
    assert_eq!(epochs, [0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0]);
    reader.log.finish().unwrap();
}
