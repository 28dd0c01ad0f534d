//! Hostile and broken inputs to evaluate and predict: non-binary heads, NaN weights, damaged
//! artifacts, an adapter trained for another model or max_len, overflowing logits and
//! terminal control characters. Each is refused with an error naming what is wrong, and
//! nothing is written (no evaluate folder, nothing on predict's stdout).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::{Device, Tensor};
use common::*;
use evaluate::ModelChoice;
use pipeline::{Config, Layout, Split, StageId};

const PREDICT: &str = env!("CARGO_BIN_EXE_predict");

/// Points the stamp of `stage_dir` at the current content of `file`, as if the stage had
/// written it: the damaged artifact then reaches its reader (the stamp check alone would
/// catch a plain edit).
fn restamp(stage_dir: &Path, file: &str) {
    let path = stage_dir.join("stamp.json");
    let mut stamp: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let hash = pipeline::stamp::hash_file(&stage_dir.join(file)).unwrap();
    stamp["outputs"][file] = serde_json::json!(hash);
    fs::write(&path, stamp.to_string()).unwrap();
}

fn edit_json(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
    edit(&mut v);
    fs::write(file, v.to_string()).unwrap();
}

/// evaluate fails with every one of `parts` in its error and leaves no evaluate folder.
fn assert_eval_refused(c: &Config, choice: &ModelChoice, parts: &[&str]) {
    let err = eval_err(c, choice);
    for part in parts {
        assert!(err.contains(part), "expected {part:?} in: {err}");
    }
    let dir = stage_dir(c, StageId::Evaluate);
    assert!(!dir.exists(), "{err}");
    let leftovers: Vec<_> = fs::read_dir(&c.artifacts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("evaluate"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn predict(config: &Path, args: &[&str]) -> Output {
    Command::new(PREDICT)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Exit code 1, nothing on stdout, every one of `parts` on stderr.
fn assert_predict_refused(o: &Output, parts: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.starts_with("error: predict: "), "{err}");
    for part in parts {
        assert!(err.contains(part), "expected {part:?} in: {err}");
    }
}

fn config_file(c: &Config, root: &Path) -> PathBuf {
    let path = root.join("pipeline.yaml");
    fs::write(&path, c.to_yaml()).unwrap();
    path
}

/// A copy of the fixture's tiny BERT under `root/name`, edited by `edit_config` and with
/// `tensor` replaced by `value` where given.
fn model_copy(
    root: &Path,
    name: &str,
    edit_config: impl FnOnce(&mut serde_json::Value),
    tensor: Option<(&str, f32)>,
) -> PathBuf {
    let dir = root.join(name);
    copy_dir(&bert_base(), &dir);
    edit_json(&dir.join("config.json"), edit_config);
    if let Some((name, value)) = tensor {
        let file = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let t = &tensors[name];
        let n = t.elem_count();
        let filled = Tensor::from_vec(vec![value; n], t.dims(), &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), filled);
        candle_core::safetensors::save(&tensors, &file).unwrap();
    }
    dir
}

#[test]
fn a_head_with_other_than_2_labels_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    prepare(&c);
    for (labels, key) in [(1, "num_labels"), (3, "id2label")] {
        let model = model_copy(
            tmp.path(),
            &format!("labels-{labels}"),
            |j| match labels {
                1 => j["num_labels"] = serde_json::json!(1),
                _ => j["id2label"] = serde_json::json!({"0": "a", "1": "b", "2": "c"}),
            },
            None,
        );
        let choice = ModelChoice {
            model: Some(model.clone()),
            adapter: Some(bert_adapter()),
        };
        assert_eval_refused(
            &c,
            &choice,
            &[&format!(
                "{}: the classification head has {labels} labels ({key}); this pipeline \
                 classifies reviews as negative or positive and needs a checkpoint with 2 labels",
                model.join("config.json").display()
            )],
        );
    }
}

#[test]
fn damaged_token_and_data_files_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    prepare(&c);
    let peft = ModelChoice {
        model: None,
        adapter: Some(bert_adapter()),
    };
    // A token file whose header says max_len 0 (it used to divide by zero).
    let tokens_dir = stage_dir(&c, StageId::Tokenize);
    let file = Layout::tokens_file(Split::Test);
    let saved = fs::read(tokens_dir.join(file)).unwrap();
    let t = pipeline::tokens::TokenSplit::read(&tokens_dir.join(file)).unwrap();
    pipeline::tokens::TokenSplit {
        max_len: 0,
        input_ids: vec![],
        attention_mask: vec![],
        ..t
    }
    .write(&tokens_dir.join(file))
    .unwrap();
    restamp(&tokens_dir, file);
    assert_eval_refused(
        &c,
        &peft,
        &[&format!(
            "{} is not a valid token file (rerun `just tokenize`): the `tokens` metadata entry: \
             max_len is 0, expected at least 1",
            tokens_dir.join(file).display()
        )],
    );
    fs::write(tokens_dir.join(file), saved).unwrap();
    restamp(&tokens_dir, file);

    // A data split with a null id (it used to become "").
    let data_dir = stage_dir(&c, StageId::DataPrep);
    let file = Layout::data_file(Split::Test);
    let mut reviews = pipeline::data::Reviews::read_parquet(&data_dir.join(file)).unwrap();
    reviews.ids[3] = String::new();
    let mut df = polars::prelude::DataFrame::new(
        reviews.len(),
        vec![
            polars::prelude::Column::new(
                "id".into(),
                reviews
                    .ids
                    .iter()
                    .map(|s| (!s.is_empty()).then_some(s.as_str()))
                    .collect::<Vec<_>>(),
            ),
            polars::prelude::Column::new("text".into(), &reviews.texts),
            polars::prelude::Column::new(
                "label".into(),
                reviews.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
            ),
            polars::prelude::Column::new("rating".into(), vec![None::<i64>; reviews.len()]),
        ],
    )
    .unwrap();
    polars::prelude::ParquetWriter::new(fs::File::create(data_dir.join(file)).unwrap())
        .finish(&mut df)
        .unwrap();
    restamp(&data_dir, file);
    assert_eval_refused(
        &c,
        &peft,
        &[&format!(
            "{}: column `id` is null at row 3, expected a value in every row",
            data_dir.join(file).display()
        )],
    );
}

/// Finite weights can still overflow: a head of ~3e38 gives infinite logits, which must be an
/// error, not a NaN probability.
#[test]
fn overflowing_logits_are_an_error_not_a_nan_probability() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    prepare(&c);
    let adapter = tmp.path().join("adapter");
    copy_dir(&bert_adapter(), &adapter);
    let file = adapter.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "base_model.model.classifier.weight";
    let huge = Tensor::from_vec(vec![3e38f32; 64], (2, 32), &Device::Cpu).unwrap();
    tensors.insert(name.into(), huge);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let choice = ModelChoice {
        model: None,
        adapter: Some(adapter),
    };
    assert_eval_refused(
        &c,
        &choice,
        &["the model gave non-finite logits", "for review 0"],
    );
}

#[test]
fn predict_refuses_nan_weights_instead_of_printing_null() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    let config = config_file(&c, tmp.path());
    let name = "bert.encoder.layer.0.attention.self.key.weight";
    let model = model_copy(tmp.path(), "nan", |_| {}, Some((name, f32::NAN)));
    let o = predict(
        &config,
        &[
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            bert_adapter().to_str().unwrap(),
            "--json",
            "A fine film.",
        ],
    );
    assert_predict_refused(
        &o,
        &[&format!(
            "{}: tensor '{name}' holds NaN or infinite values: the checkpoint is damaged",
            model.join("model.safetensors").display()
        )],
    );
}

#[test]
fn predict_refuses_the_trained_adapter_after_the_model_or_max_len_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    upstream(&c);
    let config = config_file(&c, tmp.path());
    let adapter = stage_dir(&c, StageId::Train).join("adapter");
    // Unchanged: it classifies.
    let o = predict(&config, &["A fine film."]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = predict(&config, &["--set", "model.max_len=20", "A fine film."]);
    assert_predict_refused(
        &o,
        &[&format!(
            "the trained adapter {} was trained with model.max_len = 24, but the config now \
             says 20: run `just train` to train one for it, or pass --adapter DIR",
            adapter.display()
        )],
    );
    let other = tmp.path().join("other-model");
    copy_dir(&bert_base(), &other);
    let set = format!("model.source={}", other.display());
    let o = predict(&config, &["--set", &set, "A fine film."]);
    assert_predict_refused(
        &o,
        &[&format!(
            "the trained adapter {} was trained with model.source = \"{}\", but the config now \
             says \"{}\"",
            adapter.display(),
            bert_base().display(),
            other.display()
        )],
    );
    // Keys that do not change what the model computes on a text (how it runs: device,
    // dtype) may differ: predict runs a CPU-trained adapter on a GPU.
    let o = predict(&config, &["--set", "training.dtype=f32", "A fine film."]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn predict_escapes_control_characters_in_its_table() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    let config = config_file(&c, tmp.path());
    let hostile = "Great \x1b[2J\x1b]0;pwned\x07film \u{202E}txt.exe\u{9b}31m end";
    let o = predict(
        &config,
        &[
            "--model",
            bert_base().to_str().unwrap(),
            "--adapter",
            bert_adapter().to_str().unwrap(),
            hostile,
        ],
    );
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.ends_with(
            "\tGreat \\u{1b}[2J\\u{1b}]0;pwned\\u{7}film \\u{202e}txt.exe\\u{9b}31m end\n"
        ),
        "{out}"
    );
    assert!(
        !out.chars()
            .any(|ch| ch.is_control() && ch != '\t' && ch != '\n'),
        "{out:?}"
    );
}
