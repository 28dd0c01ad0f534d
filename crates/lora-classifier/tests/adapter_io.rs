//! PEFT's adapter format: our saved adapters look like PEFT's and load back exactly.

mod common;

use std::collections::BTreeSet;

use candle_core::{DType, Device};
use common::{assert_close, max_diff, Fixture};
use lora_classifier::{LoraBias, LoraSettings, Mode, SequenceClassifier};
use serde_json::Value;

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor_names(path: &std::path::Path) -> BTreeSet<String> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect()
}

#[test]
fn saved_adapter_matches_peft_layout_and_reloads_exactly() {
    for name in ["bert-tiny-lora", "gpt2-tiny-lora"] {
        let f = Fixture::load(name);
        let m = SequenceClassifier::load_adapter(&f.ckpt, &f.adapter(), &Device::Cpu, DType::F32)
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("adapter");
        m.save_adapter(&out).unwrap();
        m.save_adapter(&out).unwrap(); // replacing an existing adapter
        let entries: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "{name}: no temporary folders left: {entries:?}"
        );

        // adapter_config.json: PEFT's keys and values (the base model path aside).
        let (ours, peft) = (
            json(&out.join("adapter_config.json")),
            json(&f.adapter().join("adapter_config.json")),
        );
        let (o, p) = (ours.as_object().unwrap(), peft.as_object().unwrap());
        assert_eq!(
            o.keys().collect::<Vec<_>>(),
            p.keys().collect::<Vec<_>>(),
            "{name}: config keys"
        );
        for (k, v) in p {
            match k.as_str() {
                "base_model_name_or_path" => assert!(o[k].as_str().unwrap().ends_with("base")),
                "target_modules" => {
                    let set = |v: &Value| {
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.to_string())
                            .collect::<BTreeSet<_>>()
                    };
                    assert_eq!(set(&o[k]), set(v), "{name}: target_modules");
                }
                _ => assert_eq!(&o[k], v, "{name}: config key {k}"),
            }
        }

        // adapter_model.safetensors: PEFT's tensor names, PEFT's values.
        let file = out.join("adapter_model.safetensors");
        assert_eq!(
            tensor_names(&file),
            tensor_names(&f.adapter().join("adapter_model.safetensors")),
            "{name}"
        );
        let ours = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let peft = candle_core::safetensors::load(
            f.adapter().join("adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        for (k, t) in &peft {
            assert_eq!(max_diff(t, &ours[k]), 0.0, "{name}: {k}");
        }

        let back =
            SequenceClassifier::load_adapter(&f.ckpt, &out, &Device::Cpu, DType::F32).unwrap();
        let (a, b) = (
            m.forward(&f.ids, &f.mask, Mode::Eval).unwrap(),
            back.forward(&f.ids, &f.mask, Mode::Eval).unwrap(),
        );
        assert_eq!(
            max_diff(&a, &b),
            0.0,
            "{name}: saved then loaded gives identical logits"
        );
        assert_close(&b, f.get("lora_logits"), 1e-4, name);
    }
}

/// Every option round-trips: bias modes (biases saved under PEFT's names), rsLoRA, our
/// layer_norm, other targets and ranks.
#[test]
fn options_round_trip() {
    let f = Fixture::load("bert-tiny-lora");
    let cases = [
        (LoraBias::All, false, false, vec!["dense", "key"]),
        (LoraBias::LoraOnly, true, false, vec!["query"]),
        (
            LoraBias::None,
            false,
            true,
            vec!["value", "intermediate.dense"],
        ),
    ];
    for (bias, use_rslora, layer_norm, targets) in cases {
        let s = LoraSettings {
            r: 3,
            alpha: 5.5,
            dropout: 0.1,
            bias,
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
            layer_norm,
            use_rslora,
        };
        let m = SequenceClassifier::new(&f.ckpt, Some(&s), 11, &Device::Cpu, DType::F32).unwrap();
        // Move every trainable parameter off its init so that the round trip is checked.
        for (i, (_, v)) in m.trainable().into_iter().enumerate() {
            v.set(&(v.as_tensor() + 0.01 * (i + 1) as f64).unwrap())
                .unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        m.save_adapter(tmp.path()).unwrap();
        let names = tensor_names(&tmp.path().join("adapter_model.safetensors"));
        match bias {
            LoraBias::All => {
                assert!(names.contains("base_model.model.bert.embeddings.LayerNorm.bias"));
                assert!(names.contains("base_model.model.bert.pooler.dense.base_layer.bias"));
                assert!(names
                    .contains("base_model.model.bert.encoder.layer.0.attention.self.query.bias"));
            }
            LoraBias::LoraOnly => {
                assert!(names.contains(
                    "base_model.model.bert.encoder.layer.1.attention.self.query.base_layer.bias"
                ));
                assert!(!names
                    .contains("base_model.model.bert.encoder.layer.1.attention.self.key.bias"));
            }
            LoraBias::None => assert!(names.iter().all(|n| !n.ends_with("bias")
                || n.contains("classifier")
                || n.contains(".lora_ln."))),
        }
        let back = SequenceClassifier::load_adapter(&f.ckpt, tmp.path(), &Device::Cpu, DType::F32)
            .unwrap();
        assert_eq!(back.lora_settings().unwrap(), m.lora_settings().unwrap());
        let (a, b) = (
            m.forward(&f.ids, &f.mask, Mode::Eval).unwrap(),
            back.forward(&f.ids, &f.mask, Mode::Eval).unwrap(),
        );
        assert_eq!(max_diff(&a, &b), 0.0, "{bias:?} {targets:?}");
        let config = json(&tmp.path().join("adapter_config.json"));
        assert_eq!(config["lora_alpha"], 5.5);
        assert_eq!(config["use_rslora"], use_rslora);
        assert_eq!(config.get("lora_layer_norm").is_some(), layer_norm);
    }
}

#[test]
fn saving_without_lora_is_an_error() {
    let f = Fixture::load("bert-tiny-lora");
    let m = SequenceClassifier::new(&f.ckpt, None, 0, &Device::Cpu, DType::F32).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = m
        .save_adapter(&tmp.path().join("a"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no LoRA adapter"), "{err}");
}

/// Adapters written by PEFT itself (fixtures/peft, made by fixtures/generate.py) with other
/// ranks, alphas, targets (`dense` also hits the pooler, `c_proj` both projections), bias modes
/// and rsLoRA load and give PEFT's logits.
#[test]
fn loads_adapters_written_by_peft() {
    let data = test_support::fixture("peft");
    for name in ["bert-dense-key-all", "gpt2-cfc-rslora-loraonly"] {
        let dir = data.join(name);
        let expected = json(&dir.join("expected_logits.json"));
        let f = Fixture::load(expected["fixture"].as_str().unwrap());
        let rows: Vec<Vec<f32>> = serde_json::from_value(expected["logits"].clone()).unwrap();
        let want = candle_core::Tensor::new(rows, &Device::Cpu).unwrap();
        let mut m =
            SequenceClassifier::load_adapter(&f.ckpt, &dir, &Device::Cpu, DType::F32).unwrap();
        for mode in [Mode::Eval, Mode::Inference] {
            assert_close(
                &m.forward(&f.ids, &f.mask, mode).unwrap(),
                &want,
                1e-4,
                name,
            );
        }
        m.merge().unwrap();
        assert_close(
            &m.forward(&f.ids, &f.mask, Mode::Inference).unwrap(),
            &want,
            1e-4,
            name,
        );
    }
}
