//! The merged Hugging Face export: loaded back as a plain checkpoint (no adapter), it gives
//! PEFT's logits for the adapter (fixtures/, made by transformers + PEFT), under the tensor
//! names and shapes transformers itself saves a *ForSequenceClassification with.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{assert_close, max_diff, Fixture};
use lora_classifier::{
    Checkpoint, ExportDtype, ExportOptions, LoraBias, LoraSettings, Mode, SequenceClassifier,
};
use serde_json::{json, Value};

const ARCHS: [&str; 2] = ["bert-tiny-lora", "gpt2-tiny-lora"];
const F32: ExportOptions = ExportOptions {
    dtype: ExportDtype::F32,
    max_len: 24,
    truncation: lora_classifier::Truncation::Head,
};

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// name → (dtype, shape) of every tensor in a safetensors file.
fn layout(path: &Path) -> BTreeMap<String, (DType, Vec<usize>)> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, (t.dtype(), t.dims().to_vec())))
        .collect()
}

/// The export loaded back as a plain checkpoint (no LoRA), its logits on the fixture batch.
fn reloaded_logits(dir: &Path, f: &Fixture) -> Tensor {
    let ckpt = Checkpoint::open(dir).unwrap();
    assert!(
        ckpt.has_head(),
        "{}: the export has its head",
        dir.display()
    );
    let m = SequenceClassifier::new(&ckpt, None, 0, &Device::Cpu, DType::F32).unwrap();
    m.forward(&f.ids, &f.mask, Mode::Inference).unwrap()
}

fn export_of(m: &SequenceClassifier, f: &Fixture, root: &Path, options: ExportOptions) -> PathBuf {
    let dir = root.join("export");
    m.export_merged(&f.ckpt, &dir, options).unwrap();
    dir
}

#[test]
fn export_reloads_with_the_adapters_logits_under_hf_names() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let tmp = tempfile::tempdir().unwrap();
        let mut m =
            SequenceClassifier::load_adapter(&f.ckpt, &f.adapter(), &Device::Cpu, DType::F32)
                .unwrap();
        let dir = export_of(&m, &f, tmp.path(), F32);

        // PEFT's answer for base + adapter, and our in-memory merge, bit for bit in f32.
        let logits = reloaded_logits(&dir, &f);
        assert_close(&logits, f.get("lora_logits"), 1e-4, name);
        m.merge().unwrap();
        let merged = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        assert_close(
            &logits,
            &merged,
            1e-6,
            &format!("{name}: vs in-memory merge"),
        );

        // The fixture's base/ was saved by transformers' save_pretrained of the same class:
        // the same names, shapes and dtypes.
        let ours = layout(&dir.join("model.safetensors"));
        let hf = layout(&f.dir.join("base/model.safetensors"));
        assert_eq!(ours, hf, "{name}: tensor names, dtypes and shapes");

        // Exporting a merged model writes the same weights.
        let again = tmp.path().join("again");
        m.export_merged(&f.ckpt, &again, F32).unwrap();
        let (a, b) = (
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap(),
            candle_core::safetensors::load(again.join("model.safetensors"), &Device::Cpu).unwrap(),
        );
        for (k, t) in &a {
            assert_eq!(max_diff(t, &b[k]), 0.0, "{name}: {k} after merge()");
        }
    }
}

#[test]
fn config_and_tokenizer_files_are_a_classifiers() {
    for (name, arch) in [
        ("bert-tiny-lora", "BertForSequenceClassification"),
        ("gpt2-tiny-lora", "GPT2ForSequenceClassification"),
    ] {
        let f = Fixture::load(name);
        let tmp = tempfile::tempdir().unwrap();
        let m = SequenceClassifier::load_adapter(&f.ckpt, &f.adapter(), &Device::Cpu, DType::F32)
            .unwrap();
        let dir = export_of(&m, &f, tmp.path(), F32);
        let base = json_file(&f.dir.join("base/config.json"));
        let c = json_file(&dir.join("config.json"));
        assert_eq!(c["architectures"], json!([arch]), "{name}");
        assert_eq!(c["id2label"], json!({"0": "negative", "1": "positive"}));
        assert_eq!(c["label2id"], json!({"negative": 0, "positive": 1}));
        assert_eq!(c["num_labels"], json!(2));
        assert_eq!(c["dtype"], json!("float32"));
        assert_eq!(c["model_type"], base["model_type"]);
        for key in [
            "vocab_size",
            "hidden_size",
            "n_embd",
            "num_hidden_layers",
            "n_layer",
        ] {
            assert_eq!(c.get(key), base.get(key), "{name}: {key} is kept");
        }
        let tok = json_file(&dir.join("tokenizer_config.json"));
        assert_eq!(tok["model_max_length"], json!(24), "{name}");
        assert_eq!(tok["truncation_side"], json!("right"), "{name}");
        if name.starts_with("gpt2") {
            assert_eq!(c["pad_token_id"], json!(50256));
            assert_eq!(tok["pad_token"], json!("<|endoftext|>"));
        }
        assert_eq!(
            std::fs::read(dir.join("tokenizer.json")).unwrap(),
            std::fs::read(f.dir.join("base/tokenizer.json")).unwrap(),
            "{name}: tokenizer.json is copied unchanged"
        );
        #[cfg(unix)]
        for entry in std::fs::read_dir(&dir).unwrap() {
            use std::os::unix::fs::PermissionsExt;
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(
                mode & 0o644,
                0o644,
                "{name}: files readable by all, owner writes"
            );
        }
        let mut written: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        written.sort();
        let mut declared = lora_classifier::EXPORT_FILES.map(String::from).to_vec();
        declared.sort();
        assert_eq!(written, declared, "{name}");
        let mut files: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["export"], "{name}: no staging folder left behind");
    }
}

/// PEFT's adapters with trained biases (bias all: LayerNorms and the pooler too; lora_only)
/// and rsLoRA: the export carries the trained biases and the right scale.
#[test]
fn trained_biases_and_rslora_are_exported() {
    let data = test_support::fixture("peft");
    for name in ["bert-dense-key-all", "gpt2-cfc-rslora-loraonly"] {
        let adapter = data.join(name);
        let expected = json_file(&adapter.join("expected_logits.json"));
        let f = Fixture::load(expected["fixture"].as_str().unwrap());
        let rows: Vec<Vec<f32>> = serde_json::from_value(expected["logits"].clone()).unwrap();
        let want = Tensor::new(rows, &Device::Cpu).unwrap();
        let m =
            SequenceClassifier::load_adapter(&f.ckpt, &adapter, &Device::Cpu, DType::F32).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = export_of(&m, &f, tmp.path(), F32);
        assert_close(&reloaded_logits(&dir, &f), &want, 1e-4, name);
    }
}

#[test]
fn half_precision_exports() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let m = SequenceClassifier::load_adapter(&f.ckpt, &f.adapter(), &Device::Cpu, DType::F32)
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let full = export_of(&m, &f, tmp.path(), F32);
        let full_size = std::fs::metadata(full.join("model.safetensors"))
            .unwrap()
            .len();
        for (dtype, torch) in [
            (ExportDtype::Bf16, "bfloat16"),
            (ExportDtype::F16, "float16"),
        ] {
            let dir = tmp.path().join(dtype.as_str());
            m.export_merged(&f.ckpt, &dir, ExportOptions { dtype, ..F32 })
                .unwrap();
            let tensors = layout(&dir.join("model.safetensors"));
            let want = if dtype == ExportDtype::Bf16 {
                DType::BF16
            } else {
                DType::F16
            };
            assert!(tensors.values().all(|(d, _)| *d == want), "{name}");
            let size = std::fs::metadata(dir.join("model.safetensors"))
                .unwrap()
                .len();
            assert!(size * 10 < full_size * 6, "{name}: {size} vs {full_size}");
            assert_eq!(json_file(&dir.join("config.json"))["dtype"], json!(torch));
            // Loaded back in f32: rounding the weights to 8 (bf16) or 11 (f16) bits.
            let tol = if dtype == ExportDtype::Bf16 {
                3e-2
            } else {
                5e-3
            };
            assert_close(
                &reloaded_logits(&dir, &f),
                f.get("lora_logits"),
                tol,
                &format!("{name} {dtype:?}"),
            );
        }
    }
}

#[test]
fn unmergeable_or_mismatched_exports_fail_and_write_nothing() {
    let f = Fixture::load("bert-tiny-lora");
    let s = LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        bias: LoraBias::None,
        target_modules: vec!["query".into()],
        layer_norm: true,
        use_rslora: false,
    };
    let m = SequenceClassifier::new(&f.ckpt, Some(&s), 0, &Device::Cpu, DType::F32).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("export");
    let err = format!("{:#}", m.export_merged(&f.ckpt, &dir, F32).unwrap_err());
    assert!(
        err.contains("layer_norm") && err.contains("cannot be merged"),
        "{err}"
    );
    let gpt2 = Fixture::load("gpt2-tiny-lora");
    let err = format!("{:#}", m.export_merged(&gpt2.ckpt, &dir, F32).unwrap_err());
    assert!(
        err.contains("not the checkpoint this model was loaded from"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert!("f64".parse::<ExportDtype>().is_err());
    assert_eq!("bf16".parse::<ExportDtype>().unwrap(), ExportDtype::Bf16);
}
