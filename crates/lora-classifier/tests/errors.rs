//! Bad inputs give clear errors that name the file and the tensor or option.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, Fixture};
use lora_classifier::{Checkpoint, LoraBias, LoraSettings, Mode, SequenceClassifier};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn open_err(dir: &Path) -> String {
    format!("{:#}", Checkpoint::open(dir).unwrap_err())
}

fn new_err(dir: &Path) -> String {
    let ckpt = Checkpoint::open(dir).unwrap();
    format!(
        "{:#}",
        SequenceClassifier::new(&ckpt, None, 0, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    )
}

fn settings(targets: &[&str]) -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        bias: LoraBias::None,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        layer_norm: false,
        use_rslora: false,
    }
}

/// Rewrites a safetensors file with `edit` applied to its tensors.
fn rewrite(file: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let mut t = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, file).unwrap();
}

#[test]
fn unsupported_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("bert-tiny-lora/base"), tmp.path());
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"model_type\": \"bert\"", "\"model_type\": \"roberta\"");
    std::fs::write(&cfg, text).unwrap();
    let err = open_err(tmp.path());
    assert!(
        err.contains("model_type 'roberta' is not supported") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn missing_folder_or_config() {
    let err = open_err(Path::new("/nonexistent/model"));
    assert!(err.contains("/nonexistent/model/config.json"), "{err}");
}

#[test]
fn only_pytorch_bin() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("bert-tiny-lora/base/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"not really").unwrap();
    let err = open_err(tmp.path());
    assert!(
        err.contains("only pytorch_model.bin") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn no_weights_at_all() {
    // Like openai-community/gpt2 in the shared cache: config and tokenizer, no weights.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("gpt2-tiny-lora/base/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("no model.safetensors"), "{err}");
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("bert-tiny-lora/base"), tmp.path());
    let file = tmp.path().join("model.safetensors");
    rewrite(&file, |t| {
        t.remove("bert.encoder.layer.1.attention.self.key.weight");
    });
    let err = new_err(tmp.path());
    assert!(
        err.contains("model.safetensors")
            && err.contains("'bert.encoder.layer.1.attention.self.key.weight' is missing"),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_names_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("gpt2-tiny-lora/base"), tmp.path());
    let file = tmp.path().join("model.safetensors");
    rewrite(&file, |t| {
        t.insert(
            "transformer.h.0.mlp.c_fc.weight".into(),
            Tensor::zeros((128, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = new_err(tmp.path());
    assert!(
        err.contains("model.safetensors")
            && err.contains(
                "'transformer.h.0.mlp.c_fc.weight' has shape [128, 32], expected [32, 128]"
            ),
        "{err}"
    );
}

#[test]
fn sharded_checkpoint_and_unprefixed_names() {
    // Split the GPT-2 fixture in two shards, without the `transformer.` prefix (as the hub's gpt2).
    let f = Fixture::load("gpt2-tiny-lora");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("gpt2-tiny-lora/base/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let all = candle_core::safetensors::load(
        fixtures().join("gpt2-tiny-lora/base/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (mut a, mut b) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in all.into_iter().enumerate() {
        let k = k
            .strip_prefix("transformer.")
            .map(String::from)
            .unwrap_or(k);
        let (shard, file) = if i % 2 == 0 {
            (&mut a, "model-00001-of-00002.safetensors")
        } else {
            (&mut b, "model-00002-of-00002.safetensors")
        };
        map.insert(k.clone(), file.into());
        shard.insert(k, v);
    }
    candle_core::safetensors::save(&a, tmp.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, tmp.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let m =
        SequenceClassifier::load_adapter(&ckpt, &f.adapter(), &Device::Cpu, DType::F32).unwrap();
    let logits = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
    common::assert_close(
        &logits,
        f.get("lora_logits"),
        1e-4,
        "sharded, unprefixed gpt2",
    );
}

#[test]
fn unknown_target_module() {
    let f = Fixture::load("bert-tiny-lora");
    let err = SequenceClassifier::new(
        &f.ckpt,
        Some(&settings(&["query", "q_proj"])),
        0,
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("[\"q_proj\"] match no linear layer") && err.contains("\"query\""),
        "{err}"
    );
}

#[test]
fn adapter_for_another_architecture() {
    let bert = Fixture::load("bert-tiny-lora");
    let gpt2 = Fixture::load("gpt2-tiny-lora");
    let err = format!(
        "{:#}",
        SequenceClassifier::load_adapter(&gpt2.ckpt, &bert.adapter(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("does not fit the checkpoint") && err.contains("match no linear layer"),
        "{err}"
    );
}

#[test]
fn adapter_for_another_hidden_size() {
    // The fixture's adapter as if made for hidden 384 (MiniLM's) on the hidden-32 fixture:
    // every LoRA matrix widened to 384 on its hidden side.
    let f = Fixture::load("bert-tiny-lora");
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&f.adapter(), tmp.path());
    rewrite(&tmp.path().join("adapter_model.safetensors"), |t| {
        for (name, tensor) in t.iter_mut() {
            let shape = if name.contains("lora_A") {
                (tensor.dim(0).unwrap(), 384)
            } else if name.contains("lora_B") {
                (384, tensor.dim(1).unwrap())
            } else {
                continue;
            };
            *tensor = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        }
    });
    let err = format!(
        "{:#}",
        SequenceClassifier::load_adapter(&f.ckpt, tmp.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("adapter_model.safetensors")
            && err.contains("has shape [4, 384]")
            && err.contains("another size"),
        "{err}"
    );
}

#[test]
fn bad_adapter_files() {
    let f = Fixture::load("bert-tiny-lora");
    let load = |dir: &Path| {
        format!(
            "{:#}",
            SequenceClassifier::load_adapter(&f.ckpt, dir, &Device::Cpu, DType::F32)
                .err()
                .unwrap()
        )
    };
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&f.adapter(), tmp.path());
    let cfg_path = tmp.path().join("adapter_config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();

    std::fs::write(
        &cfg_path,
        cfg.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let err = load(tmp.path());
    assert!(
        err.contains("adapter_config.json") && err.contains("use_dora is not supported"),
        "{err}"
    );

    std::fs::write(
        &cfg_path,
        cfg.replace("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\""),
    )
    .unwrap();
    assert!(load(tmp.path()).contains("peft_type Some(\"IA3\") is not supported"));

    std::fs::write(&cfg_path, &cfg).unwrap();
    let weights = tmp.path().join("adapter_model.safetensors");
    rewrite(&weights, |t| {
        t.remove("base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight");
    });
    let err = load(tmp.path());
    assert!(
        err.contains(
            "'base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight' is missing"
        ),
        "{err}"
    );

    std::fs::remove_file(&weights).unwrap();
    std::fs::write(tmp.path().join("adapter_model.bin"), b"x").unwrap();
    assert!(load(tmp.path()).contains("only adapter_model.bin"));
}

#[test]
fn bad_forward_inputs() {
    let f = Fixture::load("bert-tiny-lora");
    let m = SequenceClassifier::new(&f.ckpt, None, 0, &Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::new(&[[101u32, 40000, 102]], &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 3), DType::U32, &Device::Cpu).unwrap();
    assert!(m
        .forward(&ids, &mask, Mode::Eval)
        .unwrap_err()
        .to_string()
        .contains("out of the vocabulary"));
    let long = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
    assert!(m
        .forward(&long, &long, Mode::Eval)
        .unwrap_err()
        .to_string()
        .contains("sequence length 65"));
    let err = m
        .forward(&f.ids, &mask, Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention_mask"), "{err}");
}

/// PEFT's `all-linear`: every linear layer but the classifier, the same branches (names and
/// seeded values) as the names written out, which the saved adapter lists as PEFT saves them.
#[test]
fn all_linear_is_every_linear_layer_but_the_head() {
    for (model, names) in [
        (
            "bert-tiny-lora/base",
            &["query", "key", "value", "dense"][..],
        ),
        ("gpt2-tiny-lora/base", &["c_attn", "c_proj", "c_fc"][..]),
    ] {
        let ckpt = Checkpoint::open(&fixtures().join(model)).unwrap();
        let build = |targets: &[&str]| {
            SequenceClassifier::new(&ckpt, Some(&settings(targets)), 5, &Device::Cpu, DType::F32)
                .unwrap()
        };
        let (all, listed) = (build(&[lora_classifier::ALL_LINEAR]), build(names));
        assert_eq!(
            all.lora_settings().unwrap().target_modules,
            names,
            "{model}"
        );
        let values = |m: &SequenceClassifier| -> Vec<(String, Vec<f32>)> {
            m.trainable()
                .into_iter()
                .map(|(n, v)| (n, v.flatten_all().unwrap().to_vec1().unwrap()))
                .collect()
        };
        let got = values(&all);
        assert_eq!(got, values(&listed), "{model}");
        // More than the architecture's default: the attention output and the MLP too.
        let default = values(&build(&[]));
        assert!(
            got.len() > default.len(),
            "{model}: {} vs {}",
            got.len(),
            default.len()
        );
        // Besides the LoRA matrices only the head trains, as with the default, and no LoRA
        // branch sits on the head (`classifier` / `score`).
        let others = |v: &[(String, Vec<f32>)]| -> Vec<String> {
            v.iter()
                .filter(|(n, _)| !n.contains("lora_"))
                .map(|(n, _)| n.clone())
                .collect()
        };
        assert_eq!(others(&got), others(&default), "{model}");
        assert!(
            got.iter().all(|(n, _)| !(n.contains("lora_")
                && (n.contains("classifier") || n.contains("score")))),
            "{model}: a LoRA branch on the head"
        );
        let tmp = tempfile::tempdir().unwrap();
        all.save_adapter(tmp.path()).unwrap();
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let mut saved: Vec<&str> = config["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        saved.sort();
        let mut want = names.to_vec();
        want.sort();
        assert_eq!(saved, want, "{model}");
    }
}
