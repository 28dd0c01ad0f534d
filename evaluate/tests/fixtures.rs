//! A PEFT adapter from the fixtures, loaded and merged by `evaluate::Classifier`,
//! predicts what HF transformers + PEFT computed; adapters that do not fit the model are
//! errors, not garbage output.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use evaluate::{Classifier, ModelChoice};
use pipeline::Config;

const TOL: f64 = 1e-5;

/// The CPU in f32: parity within 1e-5 (`auto` is bf16 on a CPU with AVX512-BF16; the bf16
/// path is held to the fixtures in lora-classifier's low_precision tests).
fn config() -> Config {
    let mut c = Config::default();
    c.training.device = pipeline::config::DeviceSetting::Cpu;
    c.training.dtype = pipeline::config::DtypeSetting::F32;
    c
}

fn load(model: &Path, adapter: &Path) -> anyhow::Result<Classifier> {
    Classifier::load(
        &config(),
        &ModelChoice {
            model: Some(model.to_path_buf()),
            adapter: Some(adapter.to_path_buf()),
        },
    )
}

fn load_err(model: &Path, adapter: &Path) -> String {
    match load(model, adapter) {
        Ok(_) => panic!(
            "{} on {} should not load",
            adapter.display(),
            model.display()
        ),
        Err(e) => format!("{e:#}"),
    }
}

/// The fixture's `input_ids`/`attention_mask` [4, 24] as u32, and softmax(lora_logits)[:, 1].
fn expected(name: &str) -> (Vec<u32>, Vec<u32>, usize, Vec<f64>) {
    let tensors =
        candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu)
            .unwrap();
    let flat = |key: &str| -> (Vec<u32>, usize) {
        let t: &Tensor = &tensors[key];
        assert_eq!(t.dtype(), DType::I64, "{key}");
        let (_, len) = t.dims2().unwrap();
        let v: Vec<i64> = t.flatten_all().unwrap().to_vec1().unwrap();
        (
            v.into_iter().map(|x| u32::try_from(x).unwrap()).collect(),
            len,
        )
    };
    let (ids, max_len) = flat("input_ids");
    let (mask, _) = flat("attention_mask");
    let (_, probs) = fixture_probabilities(name);
    (ids, mask, max_len, probs)
}

fn assert_probs_close(got: &[f64], want: &[f64], what: &str) {
    test_support::compare::assert_close(got, want, TOL, &format!("{what}: P(positive)"));
}

fn predicts_the_fixture_logits(name: &str, model: &Path, adapter: &Path) {
    let (ids, mask, max_len, want) = expected(name);
    let classifier = load(model, adapter).unwrap();
    assert!(
        classifier.model.is_merged(),
        "{name}: the adapter is merged"
    );
    // Batches of 4 (one batch), 3 (a partial last one) and 1 (each row cut to its own
    // length): dropping all-padding columns changes nothing.
    for batch_size in [4, 3, 1] {
        let got = classifier
            .positive_probabilities(&ids, &mask, max_len, batch_size, None)
            .unwrap();
        assert_probs_close(&got, &want, &format!("{name}, batches of {batch_size}"));
    }
}

#[test]
fn bert_adapter_predicts_the_fixture_logits() {
    predicts_the_fixture_logits("bert-tiny-lora", &bert_base(), &bert_adapter());
}

#[test]
fn gpt2_adapter_predicts_the_fixture_logits() {
    predicts_the_fixture_logits("gpt2-tiny-lora", &gpt2_base(), &gpt2_adapter());
}

/// New texts go through the model's tokenizer as the fixture's ids did (BERT: [CLS] … [SEP]
/// [PAD]…; GPT-2: eos padding), so `classify_texts` on the fixture's texts gives its logits.
#[test]
fn classify_texts_matches_the_fixture_for_both_architectures() {
    for (name, model, adapter) in [
        ("bert-tiny-lora", bert_base(), bert_adapter()),
        ("gpt2-tiny-lora", gpt2_base(), gpt2_adapter()),
    ] {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
        )
        .unwrap();
        let texts: Vec<String> = json["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let mut c = config();
        c.model.max_len = json["max_len"].as_u64().unwrap() as usize;
        let encoder = evaluate::encoder_for(&c, Some(&model)).unwrap();
        let classifier = load(&model, &adapter).unwrap();
        let got = classifier.classify_texts(&encoder, &texts, 2).unwrap();
        let (_, _, _, want) = expected(name);
        assert_probs_close(&got, &want, &format!("{name}: classify_texts"));
    }
}

#[test]
fn an_adapter_for_another_architecture_is_an_error() {
    // GPT-2's adapter targets c_attn/c_proj, which BERT does not have.
    let err = load_err(&bert_base(), &gpt2_adapter());
    assert!(
        err.contains("c_attn") && err.contains(&gpt2_adapter().display().to_string()),
        "{err}"
    );
    let err = load_err(&gpt2_base(), &bert_adapter());
    assert!(err.contains("query") || err.contains("value"), "{err}");
}

/// Rewrites the fixture adapter's `target_modules` in a copy.
fn adapter_targeting(dir: &Path, targets: &[&str]) -> std::path::PathBuf {
    copy_dir(&bert_adapter(), dir);
    let path = dir.join("adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["target_modules"] = serde_json::json!(targets);
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    dir.to_path_buf()
}

#[test]
fn an_adapter_whose_target_modules_are_missing_from_the_model_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    // A module name the model does not have at all.
    let adapter = adapter_targeting(&tmp.path().join("a"), &["query", "value", "q_proj"]);
    let err = load_err(&bert_base(), &adapter);
    assert!(
        err.contains("q_proj") && err.contains("match no linear layer"),
        "{err}"
    );
    // Modules the model has, but not those the saved tensors belong to.
    let adapter = adapter_targeting(&tmp.path().join("b"), &["key"]);
    let err = load_err(&bert_base(), &adapter);
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("query"),
        "{err}"
    );
}

#[test]
fn a_missing_adapter_or_model_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load_err(&bert_base(), &tmp.path().join("no-adapter"));
    assert!(err.contains("no-adapter"), "{err}");
    let err = load_err(&tmp.path().join("no-model"), &bert_adapter());
    assert!(err.contains("no-model"), "{err}");
    // An adapter folder without its weights.
    let dir = tmp.path().join("config-only");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        bert_adapter().join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let err = load_err(&bert_base(), &dir);
    assert!(err.contains("adapter_model.safetensors"), "{err}");
}

/// `evaluate.dtype: int8` (the merged weights quantized, CPU): P(positive) within 6.5e-3 of what
/// PEFT computed in f32 (measured 4.0e-3 BERT, 4.3e-3 GPT-2), for both architectures; the
/// adapter moves P(positive) by at least 5× that, so an int8 path that dropped it fails.
#[test]
fn int8_evaluation_predicts_the_fixture_within_quantization_error() {
    const INT8_TOL: f64 = 6.5e-3;
    let mut c = config();
    c.evaluate.dtype = pipeline::config::EvaluateDtype::Int8;
    for (name, model, adapter) in [
        ("bert-tiny-lora", bert_base(), bert_adapter()),
        ("gpt2-tiny-lora", gpt2_base(), gpt2_adapter()),
    ] {
        let (ids, mask, max_len, want) = expected(name);
        let base = fixture_positive_probabilities(name, "base_logits");
        let effect = test_support::compare::max_abs_diff(&want, &base, name);
        test_support::compare::assert_detects(effect, INT8_TOL, 5.0, name);
        let choice = ModelChoice {
            model: Some(model),
            adapter: Some(adapter),
        };
        let classifier = Classifier::load(&c, &choice).unwrap();
        let got = classifier
            .positive_probabilities(&ids, &mask, max_len, 4, None)
            .unwrap();
        let d = test_support::compare::assert_close(
            &got,
            &want,
            INT8_TOL,
            &format!("{name}: int8 P(positive)"),
        );
        // Quantization changes the answer: an int8 run that silently ran f32 would be exact.
        assert!(d.max_abs > 1e-6, "{name}: int8 gave the f32 answer exactly");
    }
}
