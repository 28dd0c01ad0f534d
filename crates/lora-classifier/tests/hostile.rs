//! Hostile checkpoints and adapters: heads that are not binary, NaN/inf weights, integer LoRA
//! tensors, adapter_config.json fields of the wrong type, ranks no layer can hold and adapters
//! made for another model are refused at load, naming the file and the tensor or key.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::fixtures;
use lora_classifier::{all_finite, Checkpoint, LoraBias, LoraSettings, SequenceClassifier};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A copy of the fixture's tiny BERT (base, or adapter) in a temp dir.
fn copy_of(part: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(part);
    copy_dir(&fixtures().join("bert-tiny-lora").join(part), &dir);
    (tmp, dir)
}

fn edit_json(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(file, v.to_string()).unwrap();
}

/// `t` with its first value replaced by `value`.
fn poisoned(t: &Tensor, value: f32) -> Tensor {
    let shape = t.dims().to_vec();
    let mut v = t
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    v[0] = value;
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn model_err(dir: &Path, dtype: DType) -> String {
    let result = Checkpoint::open(dir)
        .and_then(|ckpt| SequenceClassifier::new(&ckpt, None, 0, &Device::Cpu, dtype));
    format!("{:#}", result.err().expect("must fail"))
}

fn adapter_err(base: &Path, adapter: &Path) -> String {
    let ckpt = Checkpoint::open(base).unwrap();
    let result = SequenceClassifier::load_adapter(&ckpt, adapter, &Device::Cpu, DType::F32);
    format!("{:#}", result.err().expect("must fail"))
}

#[test]
fn all_finite_tells_nan_and_inf_in_every_float_dtype() {
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let ok = Tensor::new(&[1.0f32, -2.5, 0.0, 1e-30], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        assert!(all_finite(&ok).unwrap(), "{dtype:?}");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = poisoned(&ok, bad).to_dtype(dtype).unwrap();
            assert!(!all_finite(&t).unwrap(), "{dtype:?} {bad}");
        }
    }
    // Large finite values are finite (x − x does not overflow).
    let big = Tensor::new(&[f32::MAX, f32::MIN], &Device::Cpu).unwrap();
    assert!(all_finite(&big).unwrap());
}

#[test]
fn a_head_that_is_not_binary_is_refused() {
    let (_tmp, dir) = copy_of("base");
    let config = dir.join("config.json");
    let c = config.display();
    edit_json(&config, |j| {
        j["id2label"] = serde_json::json!({"0": "neg", "1": "neutral", "2": "pos"})
    });
    assert_eq!(
        model_err(&dir, DType::F32),
        format!(
            "{c}: the classification head has 3 labels (id2label); this pipeline classifies \
             reviews as negative or positive and needs a checkpoint with 2 labels (or none: a \
             base model gets a fresh 2-label head)"
        )
    );
    edit_json(&config, |j| {
        j.as_object_mut().unwrap().remove("id2label");
        j["num_labels"] = serde_json::json!(1);
    });
    assert!(model_err(&dir, DType::F32).starts_with(&format!(
        "{c}: the classification head has 1 labels (num_labels)"
    )));
    edit_json(&config, |j| j["num_labels"] = serde_json::json!("2"));
    assert_eq!(
        model_err(&dir, DType::F32),
        format!("{c}: num_labels is \"2\", expected a whole number")
    );
}

#[test]
fn nan_or_inf_in_base_weights_is_refused_naming_the_tensor() {
    let (_tmp, dir) = copy_of("base");
    let file = dir.join("model.safetensors");
    let original = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    for (name, value) in [
        (
            "bert.encoder.layer.1.attention.output.dense.weight",
            f32::NAN,
        ),
        ("bert.embeddings.word_embeddings.weight", f32::INFINITY),
        ("classifier.weight", f32::NEG_INFINITY),
    ] {
        let mut tensors = original.clone();
        tensors.insert(name.into(), poisoned(&original[name], value));
        candle_core::safetensors::save(&tensors, &file).unwrap();
        let message = format!(
            "{}: tensor '{name}' holds NaN or infinite values: the checkpoint is damaged",
            file.display()
        );
        assert_eq!(model_err(&dir, DType::F32), message);
        // Loading an adapter onto it blames the checkpoint, not the adapter's fit.
        let adapter = fixtures().join("bert-tiny-lora/adapter");
        assert_eq!(adapter_err(&dir, &adapter), message);
    }
    // Finite in f32 but beyond f16: the conversion would make it inf.
    let mut tensors = original.clone();
    let name = "bert.encoder.layer.0.output.dense.bias";
    tensors.insert(name.into(), poisoned(&original[name], 1e6));
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    SequenceClassifier::new(&ckpt, None, 0, &Device::Cpu, DType::F32).expect("fine in f32");
    let err = model_err(&dir, DType::F16);
    assert!(
        err.contains(&format!(
            "tensor '{name}' has values beyond the range of F16"
        )),
        "{err}"
    );
}

#[test]
fn bad_adapter_tensors_are_refused_naming_the_tensor() {
    let base = fixtures().join("bert-tiny-lora/base");
    let (_tmp, adapter) = copy_of("adapter");
    let file = adapter.join("adapter_model.safetensors");
    let original = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "base_model.model.bert.encoder.layer.0.attention.self.value.lora_B.weight";
    for value in [f32::NAN, f32::INFINITY] {
        let mut tensors = original.clone();
        tensors.insert(name.into(), poisoned(&original[name], value));
        candle_core::safetensors::save(&tensors, &file).unwrap();
        assert_eq!(
            adapter_err(&base, &adapter),
            format!(
                "{}: tensor '{name}' holds NaN or infinite values: the adapter is damaged",
                file.display()
            )
        );
    }
    // Integer LoRA weights are refused, not cast.
    for dtype in [DType::I64, DType::U32, DType::U8] {
        let mut tensors = original.clone();
        let ints = original[name].to_dtype(dtype).unwrap();
        tensors.insert(name.into(), ints);
        candle_core::safetensors::save(&tensors, &file).unwrap();
        assert_eq!(
            adapter_err(&base, &adapter),
            format!(
                "{}: tensor '{name}' has dtype {dtype:?}, expected a float (LoRA weights are \
                 never integers)",
                file.display()
            )
        );
    }
}

#[test]
fn adapter_config_fields_of_the_wrong_type_are_errors() {
    let base = fixtures().join("bert-tiny-lora/base");
    let (_tmp, adapter) = copy_of("adapter");
    let config = adapter.join("adapter_config.json");
    // The fixture's alpha is 8, PEFT's default: "32" must not silently become 8.
    edit_json(&config, |j| j["lora_alpha"] = serde_json::json!("32"));
    let err = adapter_err(&base, &adapter);
    assert_eq!(
        err,
        format!(
            "{}: key `lora_alpha`: invalid type: string \"32\", expected f64",
            config.display()
        )
    );
}

/// A rank larger than a layer allows is an error before anything is allocated for it (2^40
/// would abort the process).
#[test]
fn a_rank_beyond_the_layers_is_refused_before_allocating() {
    let f = common::Fixture::load("bert-tiny-lora");
    let huge = LoraSettings {
        r: 1 << 40,
        alpha: 8.0,
        dropout: 0.0,
        bias: LoraBias::None,
        target_modules: vec![],
        layer_norm: false,
        use_rslora: false,
    };
    let err = SequenceClassifier::new(&f.ckpt, Some(&huge), 0, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "LoRA rank r = 1099511627776 is too large for layer \
         bert.encoder.layer.0.attention.self.query (32 inputs, 32 outputs): r can be at most 32"
    );
    // The bound itself is allowed.
    let at_bound = LoraSettings { r: 32, ..huge };
    SequenceClassifier::new(&f.ckpt, Some(&at_bound), 0, &Device::Cpu, DType::F32).unwrap();

    let (_tmp, adapter) = copy_of("adapter");
    edit_json(&adapter.join("adapter_config.json"), |j| {
        j["r"] = serde_json::json!(1u64 << 40)
    });
    let err = adapter_err(&fixtures().join("bert-tiny-lora/base"), &adapter);
    assert!(
        err.contains("does not fit the checkpoint")
            && err.contains("LoRA rank r = 1099511627776 is too large"),
        "{err}"
    );
}

/// The fixture's base model as if it were `org/name` in a Hugging Face cache.
fn as_hub_snapshot(root: &Path, repo: &str) -> PathBuf {
    let dir = root
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots/0123abcd");
    copy_dir(&fixtures().join("bert-tiny-lora/base"), &dir);
    dir
}

#[test]
fn an_adapter_made_for_another_hub_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = as_hub_snapshot(tmp.path(), "acme/tiny-bert");
    let (_a, adapter) = copy_of("adapter");
    let config = adapter.join("adapter_config.json");
    let set = |value: serde_json::Value| {
        edit_json(&config, |j| j["base_model_name_or_path"] = value.clone())
    };
    let loads = || {
        let ckpt = Checkpoint::open(&base).unwrap();
        SequenceClassifier::load_adapter(&ckpt, &adapter, &Device::Cpu, DType::F32).is_ok()
    };
    set(serde_json::json!("acme/other-bert"));
    assert_eq!(
        adapter_err(&base, &adapter),
        format!(
            "{}: base_model_name_or_path is \"acme/other-bert\" but the model in use is \
             \"acme/tiny-bert\" ({}): the adapter was trained on another model; use that model \
             (--model or model.source), or correct base_model_name_or_path if it is the same \
             model under another name",
            config.display(),
            base.display()
        )
    );
    // The same id in another case, a legacy id without its organisation, a local path (not
    // comparable), null and "" (unknown: PEFT's own fixture has null) all load.
    for same in [
        serde_json::json!("ACME/Tiny-BERT"),
        serde_json::json!("tiny-bert"),
        serde_json::json!("/home/someone/models/tiny-bert-copy"),
        serde_json::json!(null),
        serde_json::json!(""),
    ] {
        set(same.clone());
        assert!(loads(), "{same}");
    }
    // A local model folder is not compared with a hub id either.
    set(serde_json::json!("acme/other-bert"));
    let ckpt = Checkpoint::open(&fixtures().join("bert-tiny-lora/base")).unwrap();
    SequenceClassifier::load_adapter(&ckpt, &adapter, &Device::Cpu, DType::F32).unwrap();
}
