//! Against HF transformers + PEFT (fixtures/, made by fixtures/generate.py), eval mode, 1e-4
//! absolute or tighter.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::loss::cross_entropy;
use common::{assert_close, max_diff, scalar, Fixture};
use lora_classifier::{
    Checkpoint, ExportDtype, ExportOptions, Kernels, LoraBias, LoraSettings, Mode,
    SequenceClassifier,
};

const TOL: f32 = 1e-4;
const ARCHS: [&str; 2] = ["bert-tiny-lora", "gpt2-tiny-lora"];
const KERNELS: [Kernels; 2] = [Kernels::Auto, Kernels::Composed];

fn adapter_model(f: &Fixture, kernels: Kernels) -> SequenceClassifier {
    let mut m =
        SequenceClassifier::load_adapter(&f.ckpt, &f.adapter(), &Device::Cpu, DType::F32).unwrap();
    m.set_kernels(kernels);
    m
}

#[test]
fn base_logits() {
    for name in ARCHS {
        let f = Fixture::load(name);
        for k in KERNELS {
            let mut m =
                SequenceClassifier::new(&f.ckpt, None, 0, &Device::Cpu, DType::F32).unwrap();
            m.set_kernels(k);
            for mode in [Mode::Eval, Mode::Inference] {
                let logits = m.forward(&f.ids, &f.mask, mode).unwrap();
                assert_close(
                    &logits,
                    f.get("base_logits"),
                    TOL,
                    &format!("{name} {k:?} {mode:?} base_logits"),
                );
            }
        }
    }
}

#[test]
fn lora_logits() {
    for name in ARCHS {
        let f = Fixture::load(name);
        for k in KERNELS {
            let m = adapter_model(&f, k);
            for mode in [Mode::Eval, Mode::Inference] {
                let logits = m.forward(&f.ids, &f.mask, mode).unwrap();
                assert_close(
                    &logits,
                    f.get("lora_logits"),
                    TOL,
                    &format!("{name} {k:?} {mode:?} lora_logits"),
                );
            }
        }
    }
}

/// The loss and the gradient of every trainable parameter (backprop through attention, GELU,
/// LayerNorm and LoRA), under PEFT's in-memory names.
#[test]
fn loss_and_gradients() {
    for name in ARCHS {
        let f = Fixture::load(name);
        for k in KERNELS {
            let m = adapter_model(&f, k);
            let logits = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
            let loss = cross_entropy(&logits, &f.labels).unwrap();
            let expected_loss = f.json["initial_loss"].as_f64().unwrap() as f32;
            assert!(
                (scalar(&loss) - expected_loss).abs() < 1e-5,
                "{name} {k:?}: loss {loss} vs {expected_loss}"
            );
            let grads = loss.backward().unwrap();
            let mut names: Vec<String> = Vec::new();
            for (pname, var) in m.trainable() {
                let g = grads
                    .get(&var)
                    .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
                assert_close(
                    g,
                    f.get(&format!("grad/{pname}")),
                    TOL,
                    &format!("{name} {k:?} grad {pname}"),
                );
                names.push(pname);
            }
            let mut want: Vec<String> = f
                .expected
                .keys()
                .filter_map(|k| k.strip_prefix("grad/"))
                .map(String::from)
                .collect();
            want.sort();
            names.sort();
            assert_eq!(names, want, "{name}: trainable parameter names");
        }
    }
}

/// PyTorch's AdamW, one step.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i32,
}

impl AdamW {
    fn step(
        &mut self,
        vars: &[(String, Var)],
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        wd: f64,
    ) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        self.t += 1;
        for (i, (_, var)) in vars.iter().enumerate() {
            let g = grads.get(var).unwrap();
            self.m[i] = ((&self.m[i] * b1).unwrap() + (g * (1.0 - b1)).unwrap()).unwrap();
            self.v[i] =
                ((&self.v[i] * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
            let mhat = (&self.m[i] / (1.0 - b1.powi(self.t))).unwrap();
            let vhat = (&self.v[i] / (1.0 - b2.powi(self.t))).unwrap();
            let p = (var.as_tensor() * (1.0 - lr * wd)).unwrap();
            let upd = (mhat / (vhat.sqrt().unwrap() + eps).unwrap()).unwrap();
            var.set(&(p - (upd * lr).unwrap()).unwrap()).unwrap();
        }
    }
}

/// The fixture's five AdamW steps: losses, parameters after two steps (optimizer state too),
/// final logits, and `merged_logits` after merging the trained adapter.
#[test]
fn training_trajectory_and_merge() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let mut m = adapter_model(&f, Kernels::Auto);
        let vars = m.trainable();
        let zeros = || {
            vars.iter()
                .map(|(_, v)| v.zeros_like().unwrap())
                .collect::<Vec<_>>()
        };
        let mut opt = AdamW {
            m: zeros(),
            v: zeros(),
            t: 0,
        };
        let lrs = f.get("train_lrs").to_vec1::<f64>().unwrap();
        let losses = f.get("train_losses").to_vec1::<f32>().unwrap();
        for (step, lr) in lrs.iter().enumerate() {
            let logits = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
            let loss = cross_entropy(&logits, &f.labels).unwrap();
            assert!(
                (scalar(&loss) - losses[step]).abs() < TOL,
                "{name} step {step}: loss {loss} vs {}",
                losses[step]
            );
            opt.step(&vars, &loss.backward().unwrap(), *lr, 0.01);
            if step == 1 {
                for (pname, var) in &vars {
                    assert_close(
                        var.as_tensor(),
                        f.get(&format!("param2/{pname}")),
                        TOL,
                        &format!("{name} param2 {pname}"),
                    );
                }
            }
        }
        let final_logits = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
        assert_close(
            &final_logits,
            f.get("final_logits"),
            TOL,
            &format!("{name} final_logits"),
        );
        m.merge().unwrap();
        assert!(m.is_merged());
        let merged = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        assert_close(
            &merged,
            f.get("merged_logits"),
            TOL,
            &format!("{name} merged_logits"),
        );
        // The trained model exported as a plain HF checkpoint and loaded back without LoRA:
        // PEFT's merge_and_unload() logits.
        let tmp = tempfile::tempdir().unwrap();
        let options = ExportOptions {
            dtype: ExportDtype::F32,
            max_len: 24,
            truncation: lora_classifier::Truncation::Head,
        };
        m.export_merged(&f.ckpt, tmp.path(), options).unwrap();
        let exported = Checkpoint::open(tmp.path()).unwrap();
        let plain = SequenceClassifier::new(&exported, None, 0, &Device::Cpu, DType::F32).unwrap();
        assert_close(
            &plain.forward(&f.ids, &f.mask, Mode::Inference).unwrap(),
            f.get("merged_logits"),
            TOL,
            &format!("{name} exported merged_logits"),
        );
    }
}

#[test]
fn merge_and_unmerge() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let mut m = adapter_model(&f, Kernels::Auto);
        let before = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        m.merge().unwrap();
        m.merge().unwrap(); // idempotent
        for mode in [Mode::Inference, Mode::Eval] {
            let merged = m.forward(&f.ids, &f.mask, mode).unwrap();
            assert_close(
                &merged,
                f.get("lora_logits"),
                TOL,
                &format!("{name} merged"),
            );
        }
        m.unmerge().unwrap();
        assert!(!m.is_merged());
        let after = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        assert_eq!(
            max_diff(&before, &after),
            0.0,
            "{name}: unmerge restores the weights exactly"
        );
    }
}

/// Validation's view of the model (train's and evaluate's `training::evaluate`): merged inside,
/// PEFT's logits there, and the training weights exactly as they were afterwards.
#[test]
fn with_merged_merges_for_the_call_only() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let mut m = adapter_model(&f, Kernels::Auto);
        let before = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        let inside = m
            .with_merged(|m| {
                assert!(m.is_merged(), "{name}: merged inside");
                m.forward(&f.ids, &f.mask, Mode::Inference).unwrap()
            })
            .unwrap();
        assert_close(
            &inside,
            f.get("lora_logits"),
            TOL,
            &format!("{name} with_merged"),
        );
        assert!(!m.is_merged(), "{name}: unmerged after");
        let after = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        assert_eq!(
            max_diff(&before, &after),
            0.0,
            "{name}: with_merged leaves the weights exactly as they were"
        );
    }
}

#[test]
fn parameter_counts_match_peft() {
    // PEFT's print_trainable_parameters for the fixture configs (bias none, all, lora_only), as
    // the generator recorded it in expected.json.
    let cases = [
        ("bert-tiny-lora", LoraBias::None, "none"),
        ("bert-tiny-lora", LoraBias::All, "all"),
        ("bert-tiny-lora", LoraBias::LoraOnly, "lora_only"),
        ("gpt2-tiny-lora", LoraBias::None, "none"),
        ("gpt2-tiny-lora", LoraBias::All, "all"),
        ("gpt2-tiny-lora", LoraBias::LoraOnly, "lora_only"),
    ];
    for (name, bias, key) in cases {
        let f = Fixture::load(name);
        let line = f.json["trainable_parameters"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no trainable_parameters.{key} in expected.json"));
        let targets = if name.starts_with("bert") {
            vec!["query", "value"]
        } else {
            vec!["c_attn", "c_proj"]
        };
        let s = LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            bias,
            target_modules: targets.into_iter().map(String::from).collect(),
            layer_norm: false,
            use_rslora: false,
        };
        let m = SequenceClassifier::new(&f.ckpt, Some(&s), 0, &Device::Cpu, DType::F32).unwrap();
        let c = m.parameter_counts();
        assert_eq!(c.to_string(), line, "{name} {bias:?}");
        let n: usize = m.trainable().iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(
            n, c.trainable,
            "{name} {bias:?}: trainable() agrees with the count"
        );
    }
    // The fixture adapters: 8 LoRA matrices + classifier (BERT), 12 + score (GPT-2).
    for (name, lora, head) in [("bert-tiny-lora", 8, 2), ("gpt2-tiny-lora", 12, 1)] {
        let f = Fixture::load(name);
        let m = adapter_model(&f, Kernels::Auto);
        let names: Vec<_> = m.trainable().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.iter().filter(|n| n.contains(".lora_")).count(), lora);
        assert_eq!(
            names
                .iter()
                .filter(|n| n.contains(".modules_to_save.default."))
                .count(),
            head
        );
    }
}

/// Training-mode dropout comes from the step's seed: reproducible, seed-dependent, and the
/// same on the fused and the composed path, gradients of every bias (bias = "all") included.
#[test]
fn train_mode_dropout_is_seeded() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let mut s = f.ckpt.default_target_modules();
        s.push(if name.starts_with("bert") {
            "dense".into()
        } else {
            "c_proj".into()
        });
        let settings = LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.2,
            bias: LoraBias::All,
            target_modules: s,
            layer_norm: false,
            use_rslora: false,
        };
        let mut m =
            SequenceClassifier::new(&f.ckpt, Some(&settings), 3, &Device::Cpu, DType::F32).unwrap();
        // Non-zero B so that the LoRA dropout matters.
        for (n, v) in m.trainable() {
            if n.contains("lora_B") {
                v.set(&Tensor::full(0.05f32, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let run = |m: &SequenceClassifier, seed| {
            let logits = m
                .forward(&f.ids, &f.mask, Mode::Train { dropout_seed: seed })
                .unwrap();
            let loss = cross_entropy(&logits, &f.labels).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Tensor> = m
                .trainable()
                .iter()
                .map(|(_, v)| grads.get(v).unwrap().clone())
                .collect();
            (logits, g)
        };
        let eval = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
        let (a, ga) = run(&m, 7);
        let (b, _) = run(&m, 7);
        let (c, _) = run(&m, 8);
        assert_eq!(max_diff(&a, &b), 0.0, "{name}: same seed, same logits");
        assert!(max_diff(&a, &c) > 1e-4, "{name}: another seed, other masks");
        assert!(
            max_diff(&a, &eval) > 1e-4,
            "{name}: dropout is active in training"
        );
        m.set_kernels(Kernels::Composed);
        let (d, gd) = run(&m, 7);
        assert_close(
            &a,
            &d,
            1e-5,
            &format!("{name}: fused vs composed train logits"),
        );
        assert_eq!(ga.len(), gd.len(), "{name}: gradients");
        for (x, y) in ga.iter().zip(&gd) {
            assert_close(
                x,
                y,
                1e-5,
                &format!("{name}: fused vs composed train gradients"),
            );
        }
    }
}

/// GPT-2 reads the rightmost non-pad token as transformers 5 does: rows without padding (the
/// last token) and an eos inside the text. Reference: fixtures/gpt2-tiny-lora/rows.json.
#[test]
fn gpt2_last_token_like_hf() {
    let f = Fixture::load("gpt2-tiny-lora");
    let data: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(test_support::fixture("gpt2-tiny-lora/rows.json")).unwrap(),
    )
    .unwrap();
    let t = |k: &str| -> Tensor {
        let rows: Vec<Vec<u32>> = serde_json::from_value(data[k].clone()).unwrap();
        Tensor::new(rows, &Device::Cpu).unwrap()
    };
    let want: Vec<Vec<f32>> = serde_json::from_value(data["logits"].clone()).unwrap();
    let want = Tensor::new(want, &Device::Cpu).unwrap();
    for k in KERNELS {
        let mut m = SequenceClassifier::new(&f.ckpt, None, 0, &Device::Cpu, DType::F32).unwrap();
        m.set_kernels(k);
        let logits = m
            .forward(&t("input_ids"), &t("attention_mask"), Mode::Eval)
            .unwrap();
        assert_close(&logits, &want, TOL, &format!("{k:?} gpt2 rows"));
    }
}

/// Frozen weights in half precision (what CUDA runs; on the CPU this takes the composed path):
/// LoRA matrices, head, loss and logits stay f32, and the results stay as close to the f32
/// reference as the weights' rounding allows. Tolerances are about twice the largest error
/// measured on these fixtures (CPU):
///
/// | | logits, absolute | gradients, relative to the largest |
/// |---|---|---|
/// | BERT bf16 | 9.3e-3 | 4.4e-2 |
/// | BERT f16 | 6.6e-4 | 4.6e-3 |
/// | GPT-2 bf16 | 1.3e-2 | 2.1e-2 |
/// | GPT-2 f16 | 2.4e-3 | 3.5e-3 |
#[test]
fn half_precision_frozen_weights() {
    // (fixture, dtype, logits absolute, gradients relative to the reference's largest value)
    let cases = [
        ("bert-tiny-lora", DType::BF16, 2e-2, 0.1),
        ("bert-tiny-lora", DType::F16, 2e-3, 1e-2),
        ("gpt2-tiny-lora", DType::BF16, 3e-2, 5e-2),
        ("gpt2-tiny-lora", DType::F16, 5e-3, 1e-2),
    ];
    for (name, dtype, logit_tol, grad_tol) in cases {
        let f = Fixture::load(name);
        let (want, base) = (f.get("lora_logits"), f.get("base_logits"));
        // What the adapter does to the logits (BERT 0.146 at most, GPT-2 0.559): the check is
        // worth something only if dropping or mis-scaling the adapter moves them far more
        // than the tolerance.
        let effect = max_diff(want, base);
        assert!(
            effect >= 5.0 * logit_tol,
            "{name}: the adapter moves the logits by {effect}, too little for a tolerance of {logit_tol}"
        );
        let m =
            SequenceClassifier::load_adapter(&f.ckpt, &f.adapter(), &Device::Cpu, dtype).unwrap();
        let logits = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        assert_close(&logits, want, logit_tol, &format!("{name} {dtype:?}"));
        let loss = cross_entropy(&logits, &f.labels).unwrap();
        let grads = loss.backward().unwrap();
        for (pname, var) in m.trainable() {
            assert_eq!(var.dtype(), DType::F32, "{pname}");
            let g = grads
                .get(&var)
                .unwrap_or_else(|| panic!("{name} {dtype:?}: no gradient for {pname}"));
            assert_eq!(g.dtype(), DType::F32);
            let reference = f.get(&format!("grad/{pname}"));
            let scale = max_diff(reference, &reference.zeros_like().unwrap());
            assert_close(
                g,
                reference,
                grad_tol * scale,
                &format!("{name} {dtype:?} grad {pname}"),
            );
        }
    }
}

#[test]
fn model_and_checkpoint_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SequenceClassifier>();
    check::<lora_classifier::Checkpoint>();
}
