//! Five AdamW steps with linear warmup on the fixtures' batch, against HF transformers + PEFT
//! + torch.optim.AdamW (fixtures/*/expected.safetensors, eval mode).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::loss::cross_entropy;
use lora_classifier::{Checkpoint, Mode, SequenceClassifier};
use training::optim::{Optimizer, OptimizerSettings};
use training::schedule::{Schedule, ScheduleKind};

const TOL: f64 = 1e-5;

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    test_support::compare::assert_close(&flat(got), &flat(want), TOL, what);
}

fn trajectory(name: &str) {
    let dir = test_support::fixture(name);
    let expected: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let get = |k: &str| expected.get(k).unwrap_or_else(|| panic!("{name}: no {k}"));
    let ckpt = Checkpoint::open(&dir.join("base")).unwrap();
    let model =
        SequenceClassifier::load_adapter(&ckpt, &dir.join("adapter"), &Device::Cpu, DType::F32)
            .unwrap();
    let ids = get("input_ids").to_dtype(DType::U32).unwrap();
    let mask = get("attention_mask").to_dtype(DType::U32).unwrap();
    let labels = get("labels").to_dtype(DType::U32).unwrap();

    let params = model.trainable();
    let mut opt = Optimizer::new(
        OptimizerSettings::adamw(0.9, 0.999, 1e-8, 0.01),
        params.clone(),
    )
    .unwrap();
    let schedule = Schedule {
        kind: ScheduleKind::Linear,
        base_lr: 5e-3,
        warmup_steps: 1,
        total_steps: 5,
        step_size: 1,
        gamma: 1.0,
    };
    let (want_losses, want_lrs) = (flat(get("train_losses")), flat(get("train_lrs")));
    for t in 0..5u64 {
        let logits = model.forward(&ids, &mask, Mode::Eval).unwrap();
        let loss = cross_entropy(&logits, &labels).unwrap();
        let value = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (value - want_losses[t as usize]).abs() <= TOL,
            "{name} step {t}: loss {value} vs {}",
            want_losses[t as usize]
        );
        let lr = schedule.lr(t);
        assert!(
            (lr - want_lrs[t as usize]).abs() <= 1e-12,
            "{name} step {t}: lr {lr}"
        );
        opt.step(&loss.backward().unwrap(), lr).unwrap();
        if t == 1 {
            let mut checked = 0;
            for (pname, var) in &params {
                assert_close(
                    var.as_tensor(),
                    get(&format!("param2/{pname}")),
                    &format!("{name} param2/{pname}"),
                );
                checked += 1;
            }
            let in_fixture = expected.keys().filter(|k| k.starts_with("param2/")).count();
            assert_eq!(
                checked, in_fixture,
                "{name}: every trainable parameter is checked"
            );
        }
    }
    let logits = model.forward(&ids, &mask, Mode::Eval).unwrap();
    assert_close(
        &logits,
        get("final_logits"),
        &format!("{name} final_logits"),
    );
}

#[test]
fn bert_tiny_lora_trajectory() {
    trajectory("bert-tiny-lora");
}

#[test]
fn gpt2_tiny_lora_trajectory() {
    trajectory("gpt2-tiny-lora");
}
