//! Our LayerNorm option on the LoRA branch (`lora.layer_norm`; not in PEFT, so no fixture can
//! hold its answers), on the fixtures' tiny BERT, checked against references of its own:
//! its gradients against central finite differences of the loss, its output against a model
//! whose frozen biases hold what the branch adds, and the invariance LayerNorm implies.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::loss::cross_entropy;
use common::{assert_close, max_diff, Fixture};
use lora_classifier::{Checkpoint, Kernels, LoraBias, LoraSettings, Mode, SequenceClassifier};
use rand::{Rng, SeedableRng};

const TOL: f32 = 1e-4;

fn settings() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        bias: LoraBias::None,
        target_modules: vec!["query".into(), "value".into()],
        layer_norm: true,
        use_rslora: false,
    }
}

fn model(f: &Fixture) -> SequenceClassifier {
    SequenceClassifier::new(&f.ckpt, Some(&settings()), 0, &Device::Cpu, DType::F32).unwrap()
}

fn set_random(var: &Var, rng: &mut impl Rng, centre: f32, spread: f32) {
    let v: Vec<f32> = (0..var.elem_count())
        .map(|_| centre + rng.random_range(-spread..spread))
        .collect();
    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
}

/// Random B, LayerNorm weight and bias: every part of the branch matters.
fn randomise(m: &SequenceClassifier, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in m.trainable() {
        if name.contains("lora_B") {
            set_random(&var, &mut rng, 0.0, 0.5);
        } else if name.contains("lora_ln") && name.ends_with(".weight") {
            set_random(&var, &mut rng, 1.0, 0.3);
        } else if name.contains("lora_ln") {
            set_random(&var, &mut rng, 0.0, 0.2);
        }
    }
}

fn loss(m: &SequenceClassifier, f: &Fixture) -> Tensor {
    cross_entropy(&m.forward(&f.ids, &f.mask, Mode::Eval).unwrap(), &f.labels).unwrap()
}

/// Identity at B = 0 (LayerNorm of zeros is its bias, 0), its parameter names and count, and
/// no merging (a LayerNorm is not linear).
#[test]
fn starts_as_the_base_model_and_refuses_to_merge() {
    let f = Fixture::load("bert-tiny-lora");
    let mut m = model(&f);
    let logits = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
    assert_close(
        &logits,
        f.get("base_logits"),
        TOL,
        "layer_norm LoRA at init = base",
    );
    let names: Vec<_> = m.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(names
        .iter()
        .any(|n| n.ends_with("query.lora_ln.default.weight")));
    // Plain LoRA's 1,090 (the classifier's 66; A and B, 256 a module) and, on each of the 4
    // modules, the norm's weight and bias (2 × 32).
    assert_eq!(m.parameter_counts().trainable, 1090 + 4 * 64);
    assert!(m.merge().is_err());
    // Validation (`with_merged`) runs it unmerged instead of failing.
    let inside = m
        .with_merged(|m| {
            assert!(!m.is_merged());
            m.forward(&f.ids, &f.mask, Mode::Eval).unwrap()
        })
        .unwrap();
    assert_eq!(max_diff(&inside, &logits), 0.0);
}

/// Every trainable tensor's gradient (three elements of each: its largest and two at random)
/// against the central difference (L(θ + h) − L(θ − h)) / 2h of the forward pass alone, on the
/// fused and the composed kernels. With h = 3e-3 the f32 loss's rounding (~1e-6) leaves the
/// difference good to a few 1e-4 (measured: within 2.0e-4; smaller and larger h do worse), so
/// the tolerance is 5e-4 absolute, while each tensor's largest gradient is 0.04 to 0.5.
#[test]
fn gradients_match_finite_differences() {
    let f = Fixture::load("bert-tiny-lora");
    let mut m = model(&f);
    randomise(&m, 1);
    let h = 3e-3f32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    for kernels in [Kernels::Auto, Kernels::Composed] {
        m.set_kernels(kernels);
        let grads = loss(&m, &f).backward().unwrap();
        let mut checked = HashMap::new();
        for (name, var) in m.trainable() {
            let g = grads
                .get(&var)
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let largest = (0..g.len())
                .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                .unwrap();
            assert!(g[largest].abs() > 0.02, "{name}: gradient {g:?}");
            let original = var.as_tensor().copy().unwrap();
            let values = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in [
                largest,
                rng.random_range(0..g.len()),
                rng.random_range(0..g.len()),
            ] {
                let at = |delta: f32| {
                    let mut v = values.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&m, &f).to_scalar::<f32>().unwrap()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                var.set(&original).unwrap();
                assert!(
                    (numeric - g[i]).abs() <= 5e-4,
                    "{kernels:?} {name}[{i}]: autograd {} vs finite difference {numeric}",
                    g[i]
                );
            }
            checked.insert(name, ());
        }
        // 2 layers × (query, value) × (A, B, LayerNorm weight, LayerNorm bias), the classifier.
        assert_eq!(checked.len(), 2 * 2 * 4 + 2, "{kernels:?}");
    }
}

/// With the norm's weight 0 and bias c, the branch adds scale · c to every token, whatever its
/// input: the same as a model without LoRA whose query and value biases are c · alpha/r
/// larger. That model, a plain checkpoint, is computed by the paths the fixture tests hold to
/// transformers.
#[test]
fn output_is_the_scaled_norm_added_to_the_layer() {
    let f = Fixture::load("bert-tiny-lora");
    let m = model(&f);
    randomise(&m, 3);
    let scale = 8.0 / 4.0;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut shifts: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in m.trainable() {
        if name.contains("lora_ln") && name.ends_with(".weight") {
            var.set(&var.zeros_like().unwrap()).unwrap();
        } else if name.contains("lora_ln") {
            set_random(&var, &mut rng, 0.0, 0.5);
            // base_model.model.bert.encoder.layer.0.attention.self.query.lora_ln.default.bias
            let module = name
                .strip_prefix("base_model.model.")
                .and_then(|n| n.strip_suffix(".lora_ln.default.bias"))
                .unwrap();
            shifts.insert(format!("{module}.bias"), (var.as_tensor() * scale).unwrap());
        }
    }
    assert_eq!(shifts.len(), 4);

    let dir = tempfile::tempdir().unwrap();
    let base = f.dir.join("base");
    let mut tensors =
        candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, shift) in &shifts {
        let t = tensors
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in the fixture"));
        let shifted = (t + shift).unwrap();
        tensors.insert(name.clone(), shifted);
    }
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(base.join("config.json"), dir.path().join("config.json")).unwrap();
    let shifted = Checkpoint::open(dir.path()).unwrap();
    // The same seed gives the same fresh head; the LoRA model's head is still at its init.
    let reference = SequenceClassifier::new(
        &shifted,
        Some(&LoraSettings {
            layer_norm: false,
            ..settings()
        }),
        0,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let want = reference.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
    let base_logits = f.get("base_logits");
    assert!(
        max_diff(&want, base_logits) > 100.0 * TOL,
        "the shifted biases change the output"
    );
    let mut m = m;
    for kernels in [Kernels::Auto, Kernels::Composed] {
        m.set_kernels(kernels);
        let got = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
        assert_close(&got, &want, TOL, &format!("{kernels:?}"));
    }
}

/// LayerNorm undoes any positive scaling of B·A·x: tripling every B leaves the logits as they
/// are (and they do differ from the base model's).
#[test]
fn output_does_not_depend_on_the_scale_of_b() {
    let f = Fixture::load("bert-tiny-lora");
    let m = model(&f);
    randomise(&m, 5);
    let before = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
    assert!(max_diff(&before, f.get("base_logits")) > 100.0 * TOL);
    for (name, var) in m.trainable() {
        if name.contains("lora_B") {
            var.set(&(var.as_tensor() * 3.0).unwrap()).unwrap();
        }
    }
    let after = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
    assert_close(&after, &before, TOL, "B × 3");
}
