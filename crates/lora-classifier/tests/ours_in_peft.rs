//! Ours load in PEFT: adapters written by our `save_adapter` (committed under
//! `fixtures/ours-in-peft/`), loaded by PEFT 0.21.2 with every tensor matched (no missing or
//! unexpected keys; `fixtures/generate.py` checks that) and run by transformers on the tiny
//! fixture batch. Here: our writer still writes exactly those files, and our model on them
//! gives PEFT's logits. Together: what we write today, PEFT reads as we do.
//!
//! `fixtures/generate.py` makes the committed adapters by running this test with
//! `OURS_IN_PEFT_WRITE=<dir>` (it then writes them there instead of comparing).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{values, Fixture};
use lora_classifier::{LoraBias, LoraSettings, Mode, SequenceClassifier};
use rand::{Rng, SeedableRng};
use test_support::compare::{assert_close, assert_detects, max_abs_diff};

const WRITE_ENV: &str = "OURS_IN_PEFT_WRITE";
/// Logits against PEFT's: f32 on both sides (observed ~1e-7 on the fixtures).
const TOL: f64 = 1e-5;

/// (folder, base fixture, settings): options that change the file layout PEFT must read —
/// every bias (`all`, under PEFT's `base_layer` names), rsLoRA, a target that also hits the
/// pooler; GPT-2's Conv1D (`fan_in_fan_out`) with `lora_only` biases and two targets.
fn cases() -> Vec<(&'static str, &'static str, LoraSettings)> {
    let s = |r, alpha, bias, targets: &[&str], use_rslora| LoraSettings {
        r,
        alpha,
        dropout: 0.1,
        bias,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        layer_norm: false,
        use_rslora,
    };
    vec![
        (
            "bert-query-dense-all-rslora",
            "bert-tiny-lora",
            s(3, 6.0, LoraBias::All, &["query", "dense"], true),
        ),
        (
            "gpt2-cattn-cfc-loraonly",
            "gpt2-tiny-lora",
            s(2, 8.0, LoraBias::LoraOnly, &["c_attn", "c_fc"], false),
        ),
    ]
}

/// Our model with `s` on the fixture's base, every trainable value moved off its init by
/// seeded noise (so lora_B is non-zero and the adapter changes the output).
fn model(f: &Fixture, s: &LoraSettings) -> SequenceClassifier {
    let m = SequenceClassifier::new(&f.ckpt, Some(s), 5, &Device::Cpu, DType::F32).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    for (_, v) in m.trainable() {
        let t = v.as_tensor();
        let noise: Vec<f32> = (0..t.elem_count())
            .map(|_| rng.random_range(-0.1f32..0.1))
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        v.set(&(t + noise).unwrap()).unwrap();
    }
    m
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn our_adapters_are_the_ones_peft_loaded_and_give_its_logits() {
    let write_to = std::env::var_os(WRITE_ENV);
    for (case, base, settings) in cases() {
        let f = Fixture::load(base);
        let m = model(&f, &settings);
        if let Some(dir) = &write_to {
            m.save_adapter(&Path::new(dir).join(case)).unwrap();
            continue;
        }
        let committed = test_support::fixture("ours-in-peft").join(case);
        let tmp = tempfile::tempdir().unwrap();
        m.save_adapter(tmp.path()).unwrap();

        // 1. Our writer writes today what PEFT loaded: the same config (the base path aside,
        //    which names the folder it was written from) and the same tensors, bit for bit.
        let (ours, theirs) = (
            json(&tmp.path().join("adapter_config.json")),
            json(&committed.join("adapter_config.json")),
        );
        let (o, t) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
        assert_eq!(
            o.keys().collect::<Vec<_>>(),
            t.keys().collect::<Vec<_>>(),
            "{case}: config keys"
        );
        for (k, v) in t {
            if k != "base_model_name_or_path" {
                assert_eq!(&o[k], v, "{case}: adapter_config.json key {k}");
            }
        }
        let (ours, theirs) = (
            tensors(&tmp.path().join("adapter_model.safetensors")),
            tensors(&committed.join("adapter_model.safetensors")),
        );
        let mut names: Vec<_> = theirs.keys().collect();
        names.sort();
        assert_eq!(
            {
                let mut n: Vec<_> = ours.keys().collect();
                n.sort();
                n
            },
            names,
            "{case}: tensor names"
        );
        for name in names {
            let (a, b) = (&ours[name], &theirs[name]);
            assert_eq!(a.dims(), b.dims(), "{case}: {name}");
            assert_eq!(
                max_abs_diff(&values(a), &values(b), name),
                0.0,
                "{case}: {name} differs from the file PEFT loaded"
            );
        }

        // 2. PEFT's logits on the committed adapter (transformers, f32) equal ours on it.
        let expected = json(&committed.join("expected_logits.json"));
        let peft: Vec<f32> = serde_json::from_value::<Vec<Vec<f32>>>(expected["logits"].clone())
            .unwrap()
            .concat();
        let loaded =
            SequenceClassifier::load_adapter(&f.ckpt, &committed, &Device::Cpu, DType::F32)
                .unwrap();
        let got = values(&loaded.forward(&f.ids, &f.mask, Mode::Eval).unwrap());
        let base = values(f.get("base_logits"));
        assert_detects(
            max_abs_diff(&peft, &base, case),
            TOL,
            5.0,
            &format!("{case}: adapter"),
        );
        assert_close(&got, &peft, TOL, &format!("{case}: logits against PEFT's"));
    }
}
