//! The evaluate stage end to end on a tiny run: data-prep, tokenize and train in-process on a
//! tiny parquet source with the fixture's tiny BERT, then `evaluate::run`.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use evaluate::{Classifier, ModelChoice, Outcome};
use pipeline::data::Reviews;
use pipeline::predictions::{
    ExamplePrediction, Predictions, EXAMPLES_FILE, METRICS_FILE, PREDICTIONS_FILE, REPORT_TEXT_FILE,
};
use pipeline::tokens::TokenSplit;
use pipeline::{Config, Layout, Split, StageId};

/// The same probability up to float rounding: another batch size pads to another width, which
/// changes the order of the sums (by ~1e-8 here), nothing else.
const SAME: f64 = 1e-6;

/// The same probabilities, row for row, and as many (a `zip` alone passes on an empty list).
#[track_caller]
fn assert_same_probabilities(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
    test_support::compare::assert_close(got, want, tolerance, what);
}

fn data_split(c: &Config, split: Split) -> Reviews {
    Reviews::read_parquet(&stage_dir(c, StageId::DataPrep).join(Layout::data_file(split))).unwrap()
}

fn read_metrics(path: &Path) -> metrics::Metrics {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks one split's outputs against the data split and the metrics crate; returns the
/// predictions.
fn check_split_outputs(c: &Config, dir: &Path, split: Split, prefix: &str) -> Predictions {
    let data = data_split(c, split);
    let preds =
        Predictions::read_parquet(&dir.join(format!("{prefix}{PREDICTIONS_FILE}"))).unwrap();
    assert_eq!(
        preds.ids, data.ids,
        "{split}: ids are the data split's, in order"
    );
    let labels: Vec<u32> = data.labels.iter().map(|&l| u32::from(l)).collect();
    assert_eq!(preds.labels, labels, "{split}: labels");
    for (i, &p) in preds.prob_positive.iter().enumerate() {
        assert!((0.0..=1.0).contains(&p), "{split} row {i}: probability {p}");
    }
    let threshold = c.evaluate.threshold;
    let predicted: Vec<u32> = preds
        .prob_positive
        .iter()
        .map(|&p| u32::from(p >= threshold))
        .collect();
    assert_eq!(
        preds.predicted, predicted,
        "{split}: predicted = prob >= threshold"
    );

    let m = read_metrics(&dir.join(format!("{prefix}{METRICS_FILE}")));
    let want = metrics::evaluate(&preds.labels, &preds.prob_positive, threshold).unwrap();
    assert_eq!(
        m, want,
        "{split}: metrics.json is metrics::evaluate of the predictions"
    );
    assert_eq!(m.n_samples, data.len());
    assert_eq!(
        fs::read_to_string(dir.join(format!("{prefix}{REPORT_TEXT_FILE}"))).unwrap(),
        m.classification_report_text
    );
    assert!(m.classification_report_text.contains("negative"));
    preds
}

fn check_examples(c: &Config, dir: &Path) -> Vec<ExamplePrediction> {
    let examples: Vec<ExamplePrediction> =
        serde_json::from_str(&fs::read_to_string(dir.join(EXAMPLES_FILE)).unwrap()).unwrap();
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, c.evaluate.examples);
    for e in &examples {
        assert_eq!(
            e,
            &ExamplePrediction::new(&e.text, e.prob_positive, c.evaluate.threshold)
        );
        assert!((0.0..=1.0).contains(&e.prob_positive), "{e:?}");
    }
    examples
}

fn all_outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn evaluates_the_trained_adapter_then_is_up_to_date() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_config(tmp.path());
    c.evaluate.validation = true;
    upstream(&c);
    let choice = ModelChoice::default();

    let Outcome::Ran {
        dir,
        summary: evaluate::Evaluation { metrics, .. },
        ..
    } = evaluate::run(&c, &choice, false).unwrap()
    else {
        panic!("the first run evaluates")
    };
    assert_eq!(dir, stage_dir(&c, StageId::Evaluate));
    let preds = check_split_outputs(&c, &dir, Split::Test, "");
    assert_eq!(
        *metrics,
        read_metrics(&dir.join(METRICS_FILE)),
        "the returned metrics"
    );
    assert_eq!(preds.ids.len(), 24);
    check_split_outputs(&c, &dir, Split::Validation, "validation_");
    let examples = check_examples(&c, &dir);
    assert!(dir.join("stamp.json").is_file());

    // The test probabilities are the trained adapter's on the tokenized test split.
    let classifier = Classifier::load(&c, &choice).unwrap();
    let tokens =
        TokenSplit::read(&stage_dir(&c, StageId::Tokenize).join(Layout::tokens_file(Split::Test)))
            .unwrap();
    let probs = classifier
        .positive_probabilities(
            &tokens.input_ids,
            &tokens.attention_mask,
            tokens.max_len,
            7,
            None,
        )
        .unwrap();
    assert_same_probabilities(&preds.prob_positive, &probs, SAME, "test predictions");
    let encoder = evaluate::encoder_for(&c, None).unwrap();
    let example_probs = classifier
        .classify_texts(&encoder, &c.evaluate.examples, 64)
        .unwrap();
    let got: Vec<f64> = examples.iter().map(|e| e.prob_positive).collect();
    assert_same_probabilities(&got, &example_probs, SAME, "examples");

    // Unchanged: up to date, nothing rewritten.
    let before = all_outputs(&dir);
    assert!(matches!(
        evaluate::run(&c, &choice, false).unwrap(),
        Outcome::UpToDate { dir: d } if d == dir
    ));
    assert_eq!(all_outputs(&dir), before);
    // --force reruns, and the same inputs give the same bytes.
    assert!(matches!(
        evaluate::run(&c, &choice, true).unwrap(),
        Outcome::Ran { .. }
    ));
    assert_eq!(all_outputs(&dir), before, "evaluation is deterministic");

    // An evaluate key reruns it: threshold 0 predicts every review positive.
    c.evaluate.threshold = 0.0;
    let Outcome::Ran {
        summary: evaluate::Evaluation { metrics, .. },
        ..
    } = evaluate::run(&c, &choice, false).unwrap()
    else {
        panic!("a changed evaluate.threshold reruns the stage")
    };
    let preds = check_split_outputs(&c, &dir, Split::Test, "");
    assert!(preds.predicted.iter().all(|&p| p == 1));
    assert_eq!(
        metrics.confusion_matrix.tn + metrics.confusion_matrix.fn_,
        0
    );
    check_examples(&c, &dir);
    // Without evaluate.validation, the validation outputs are gone (the folder is replaced).
    c.evaluate.validation = false;
    evaluate::run(&c, &choice, false).unwrap();
    assert!(!dir.join(format!("validation_{PREDICTIONS_FILE}")).exists());
    assert!(dir.join(PREDICTIONS_FILE).exists());
}

/// `--adapter DIR`: a PEFT adapter folder (here the fixture's, trained in Python) instead of
/// this run's: the train stage is not needed.
#[test]
fn a_peft_adapter_folder_replaces_the_trained_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_config(tmp.path());
    // The fixture's texts as the examples: their probabilities are PEFT's own (transformers +
    // PEFT computed them with this adapter, fixtures/bert-tiny-lora/expected.*).
    let (texts, peft_probs) = fixture_probabilities("bert-tiny-lora");
    c.evaluate.examples = texts;
    prepare(&c);
    let peft = ModelChoice {
        model: None,
        adapter: Some(bert_adapter()),
    };
    let Outcome::Ran { dir, .. } = evaluate::run(&c, &peft, false).unwrap() else {
        panic!("evaluates")
    };
    let preds = check_split_outputs(&c, &dir, Split::Test, "");
    let examples = check_examples(&c, &dir);
    let got: Vec<f64> = examples.iter().map(|e| e.prob_positive).collect();
    assert_same_probabilities(&got, &peft_probs, 1e-5, "examples vs PEFT's probabilities");
    // The test split's probabilities are those of the classifier loaded directly (which
    // tests/fixtures.rs holds to PEFT's on the fixture's rows).
    let tokens =
        TokenSplit::read(&stage_dir(&c, StageId::Tokenize).join(Layout::tokens_file(Split::Test)))
            .unwrap();
    let want = Classifier::load(&c, &peft)
        .unwrap()
        .positive_probabilities(
            &tokens.input_ids,
            &tokens.attention_mask,
            tokens.max_len,
            64,
            None,
        )
        .unwrap();
    assert_same_probabilities(&preds.prob_positive, &want, SAME, "test predictions");
    assert!(matches!(
        evaluate::run(&c, &peft, false).unwrap(),
        Outcome::UpToDate { .. }
    ));

    // The same adapter from another folder is the same input: still up to date.
    let copy = tmp.path().join("adapter-copy");
    copy_dir(&bert_adapter(), &copy);
    let moved = ModelChoice {
        model: None,
        adapter: Some(copy.clone()),
    };
    assert!(matches!(
        evaluate::run(&c, &moved, false).unwrap(),
        Outcome::UpToDate { .. }
    ));
    // An edited adapter is not.
    let config = copy.join("adapter_config.json");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"lora_alpha\": 8", "\"lora_alpha\": 16");
    fs::write(&config, text).unwrap();
    assert!(matches!(
        evaluate::run(&c, &moved, false).unwrap(),
        Outcome::Ran { .. }
    ));
    // `--model DIR` names the checkpoint folder explicitly; same files, same result.
    let explicit = ModelChoice {
        model: Some(bert_base()),
        adapter: Some(bert_adapter()),
    };
    evaluate::run(&c, &explicit, false).unwrap();
    let again = Predictions::read_parquet(&dir.join(PREDICTIONS_FILE)).unwrap();
    assert_eq!(again, preds);

    // Without --adapter, this run's adapter is needed, and there is none.
    let err = eval_err(&c, &ModelChoice::default());
    assert!(err.contains("just train"), "{err}");
}

#[test]
fn missing_or_stale_upstream_artifacts_name_the_stage_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_config(tmp.path());
    let choice = ModelChoice::default();
    let peft = ModelChoice {
        model: None,
        adapter: Some(bert_adapter()),
    };

    // Nothing at all.
    let err = eval_err(&c, &choice);
    assert!(err.contains("just tokenize"), "{err}");
    data_prep::run(&c, false).unwrap();
    let err = eval_err(&c, &peft);
    assert!(err.contains("just tokenize"), "{err}");
    tokenize::run(&c, false).unwrap();
    // Tokens but no adapter.
    let err = eval_err(&c, &choice);
    assert!(err.contains("just train"), "{err}");
    train::run(&c, false).unwrap();
    evaluate::run(&c, &choice, false).unwrap();
    let eval_dir = stage_dir(&c, StageId::Evaluate);
    let stamp = fs::read(eval_dir.join("stamp.json")).unwrap();

    // A deleted token file.
    let test_tokens = stage_dir(&c, StageId::Tokenize).join(Layout::tokens_file(Split::Test));
    let saved = fs::read(&test_tokens).unwrap();
    fs::remove_file(&test_tokens).unwrap();
    let err = eval_err(&c, &choice);
    assert!(
        err.contains("just tokenize") && err.contains("test.safetensors"),
        "{err}"
    );
    fs::write(&test_tokens, &saved).unwrap();
    // A deleted data split (under tokenize, so both are named).
    let test_data = stage_dir(&c, StageId::DataPrep).join(Layout::data_file(Split::Test));
    let saved_data = fs::read(&test_data).unwrap();
    fs::remove_file(&test_data).unwrap();
    let err = eval_err(&c, &choice);
    assert!(
        err.contains("just data-prep") && err.contains("test.parquet"),
        "{err}"
    );
    fs::write(&test_data, &saved_data).unwrap();
    // A deleted adapter file.
    let adapter = stage_dir(&c, StageId::Train).join("adapter/adapter_model.safetensors");
    let saved_adapter = fs::read(&adapter).unwrap();
    fs::remove_file(&adapter).unwrap();
    let err = eval_err(&c, &choice);
    assert!(err.contains("just train"), "{err}");
    fs::write(&adapter, &saved_adapter).unwrap();
    assert!(matches!(
        evaluate::run(&c, &choice, false).unwrap(),
        Outcome::UpToDate { .. }
    ));

    // Config changed upstream without rerunning the stages that read it.
    let lr = c.training.learning_rate;
    c.training.learning_rate = 2e-2;
    let err = eval_err(&c, &choice);
    assert!(
        err.contains("just train") && err.contains("training.learning_rate"),
        "{err}"
    );
    c.training.learning_rate = lr;
    c.data.train_fraction = 0.75;
    let err = eval_err(&c, &choice);
    assert!(
        err.contains("just data-prep") && err.contains("data.train_fraction"),
        "{err}"
    );
    c.data.train_fraction = 0.5;
    c.model.max_len = 20;
    let err = eval_err(&c, &choice);
    assert!(
        err.contains("just tokenize") && err.contains("model.max_len"),
        "{err}"
    );
    c.model.max_len = 24;

    // None of the failures touched the outputs.
    assert_eq!(fs::read(eval_dir.join("stamp.json")).unwrap(), stamp);
    assert!(matches!(
        evaluate::run(&c, &choice, false).unwrap(),
        Outcome::UpToDate { .. }
    ));
}

/// An adapter that does not fit the model fails the stage and leaves no outputs.
#[test]
fn a_mismatched_adapter_fails_without_writing_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    prepare(&c);
    let gpt2 = ModelChoice {
        model: None,
        adapter: Some(gpt2_adapter()),
    };
    let err = eval_err(&c, &gpt2);
    assert!(err.contains("c_attn"), "{err}");
    let dir = stage_dir(&c, StageId::Evaluate);
    assert!(!dir.exists(), "no evaluate folder after a failure");
    // Nor a half-written staging folder beside it.
    let leftovers: Vec<_> = fs::read_dir(&c.artifacts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("evaluate"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // `--model` naming the GPT-2 checkpoint, with the BERT adapter.
    let bert_on_gpt2 = ModelChoice {
        model: Some(gpt2_base()),
        adapter: Some(bert_adapter()),
    };
    // The tokens were made with BERT's tokenizer, not this model's: refused first.
    let err = eval_err(&c, &bert_on_gpt2);
    assert!(
        err.contains("tokenizer/tokenizer.json changed since `tokenize` ran")
            && err.contains("just tokenize"),
        "{err}"
    );
    assert!(!dir.exists());
    // With BERT's tokenizer beside GPT-2's weights, the adapter is what does not fit.
    let gpt2 = tmp.path().join("gpt2-with-bert-tokenizer");
    copy_dir(&gpt2_base(), &gpt2);
    fs::copy(
        bert_base().join("tokenizer.json"),
        gpt2.join("tokenizer.json"),
    )
    .unwrap();
    let bert_on_gpt2 = ModelChoice {
        model: Some(gpt2),
        adapter: Some(bert_adapter()),
    };
    let err = eval_err(&c, &bert_on_gpt2);
    assert!(err.contains("query") || err.contains("value"), "{err}");
    assert!(!dir.exists());
}

/// `--model DIR` with a sharded checkpoint (`model.safetensors.index.json` + shards): every
/// shard is an input, so an edited shard reruns the stage.
#[test]
fn every_shard_of_a_sharded_model_is_an_input() {
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;

    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_config(tmp.path());
    prepare(&c);
    // The fixture model in two shards.
    let sharded = tmp.path().join("sharded");
    fs::create_dir_all(&sharded).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        fs::copy(bert_base().join(file), sharded.join(file)).unwrap();
    }
    let tensors =
        candle_core::safetensors::load(bert_base().join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let shard_of = |name: &str| {
        if name.contains("embeddings") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        }
    };
    let mut shards: HashMap<&str, HashMap<String, Tensor>> = HashMap::new();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in &tensors {
        shards
            .entry(shard_of(name))
            .or_default()
            .insert(name.clone(), t.clone());
        weight_map.insert(name.clone(), shard_of(name).into());
    }
    for (file, tensors) in &shards {
        candle_core::safetensors::save(tensors, sharded.join(file)).unwrap();
    }
    fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": weight_map }).to_string(),
    )
    .unwrap();

    let choice = ModelChoice {
        model: Some(sharded.clone()),
        adapter: Some(bert_adapter()),
    };
    let Outcome::Ran { dir, .. } = evaluate::run(&c, &choice, false).unwrap() else {
        panic!("evaluates")
    };
    // The same weights as the single-file fixture: the same predictions.
    let sharded_preds = check_split_outputs(&c, &dir, Split::Test, "");
    let single = ModelChoice {
        model: Some(bert_base()),
        adapter: Some(bert_adapter()),
    };
    assert!(matches!(
        evaluate::run(&c, &single, false).unwrap(),
        Outcome::Ran { .. }
    ));
    let single_preds = Predictions::read_parquet(&dir.join(PREDICTIONS_FILE)).unwrap();
    assert_same_probabilities(
        &sharded_preds.prob_positive,
        &single_preds.prob_positive,
        SAME,
        "sharded vs single-file checkpoint",
    );
    assert!(matches!(
        evaluate::run(&c, &choice, false).unwrap(),
        Outcome::Ran { .. }
    ));
    assert!(matches!(
        evaluate::run(&c, &choice, false).unwrap(),
        Outcome::UpToDate { .. }
    ));

    // An edited second shard (the encoder's weights) reruns it.
    let file = sharded.join("model-00002-of-00002.safetensors");
    let mut second = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "bert.encoder.layer.0.output.LayerNorm.weight";
    let edited = (second[name].clone() * 1.5).unwrap();
    second.insert(name.to_string(), edited);
    candle_core::safetensors::save(&second, &file).unwrap();
    assert!(
        matches!(
            evaluate::run(&c, &choice, false).unwrap(),
            Outcome::Ran { .. }
        ),
        "a changed shard is a changed input"
    );
}

/// The upstream check covers train's config and outputs; evaluate also checks that the model's
/// files are those train used, else the adapter would meet weights it was not trained on.
#[test]
fn a_model_changed_since_training_names_the_train_stage() {
    use candle_core::Device;

    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_config(tmp.path());
    let model = tmp.path().join("model");
    copy_dir(&bert_base(), &model);
    c.model.source = model.display().to_string();
    upstream(&c);
    evaluate::run(&c, &ModelChoice::default(), false).unwrap();

    // New weights in the same folder (same config keys).
    let file = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "bert.encoder.layer.0.output.LayerNorm.weight";
    let edited = (tensors[name].clone() * 1.5).unwrap();
    tensors.insert(name.to_string(), edited);
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let err = eval_err(&c, &ModelChoice::default());
    assert!(
        err.contains("model.safetensors") && err.contains("just train"),
        "{err}"
    );
    // An explicit adapter is the user's choice: it runs.
    let peft = ModelChoice {
        model: None,
        adapter: Some(bert_adapter()),
    };
    assert!(matches!(
        evaluate::run(&c, &peft, false).unwrap(),
        Outcome::Ran { .. }
    ));
    // Once train reruns on the new weights, evaluate follows.
    assert!(matches!(
        train::run(&c, false).unwrap(),
        train::Outcome::Ran { .. }
    ));
    assert!(matches!(
        evaluate::run(&c, &ModelChoice::default(), false).unwrap(),
        Outcome::Ran { .. }
    ));
}
