//! The `predict` binary: texts from arguments, a file or stdin; a table or JSON lines; clear
//! errors for empty input.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use evaluate::predict_cli::JsonLine;
use evaluate::{Classifier, ModelChoice};
use pipeline::predictions::ExamplePrediction;

const PREDICT: &str = env!("CARGO_BIN_EXE_predict");

/// A config file whose model is the fixture's tiny BERT, artifacts under `root` (empty).
fn config_file(root: &Path) -> PathBuf {
    write_config(root, &predict_config(root))
}

/// Runs predict with the fixture model and adapter, `args` after them, `stdin` piped in.
fn predict(root: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let config = config_file(root);
    let mut cmd = Command::new(PREDICT);
    cmd.arg("--config")
        .arg(&config)
        .arg("--model")
        .arg(bert_base())
        .arg("--adapter")
        .arg(bert_adapter())
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        None => {
            cmd.stdin(Stdio::null());
            cmd.output().unwrap()
        }
        Some(text) => {
            cmd.stdin(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// P(positive) of each text, computed in-process as predict should.
fn expected_probs(root: &Path, texts: &[&str]) -> Vec<f64> {
    let config = pipeline::Config::load(&config_file(root), &[]).unwrap();
    let choice = ModelChoice {
        model: Some(bert_base()),
        adapter: Some(bert_adapter()),
    };
    let classifier = Classifier::load(&config, &choice).unwrap();
    let encoder = evaluate::encoder_for(&config, Some(&bert_base())).unwrap();
    let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    classifier.classify_texts(&encoder, &texts, 64).unwrap()
}

/// Exit code 1, nothing on stdout, and `message` on stderr.
fn assert_fails_clearly(o: &Output, what: &str, message: &str) {
    assert!(!o.status.success(), "{what}: should fail");
    assert_eq!(o.status.code(), Some(1), "{what}");
    let err = stderr(o);
    assert!(
        err.contains("error: predict:") && err.contains(message),
        "{what}: {err}"
    );
    assert!(stdout(o).is_empty(), "{what}: {}", stdout(o));
}

#[test]
fn empty_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    const EMPTY: &str = "no texts given";
    const BLANK: &str = "no text to classify (only blank lines)";
    assert_fails_clearly(
        &predict(root, &[], None),
        "no arguments, empty stdin",
        EMPTY,
    );
    assert_fails_clearly(&predict(root, &[], Some("")), "empty piped stdin", EMPTY);
    assert_fails_clearly(
        &predict(root, &[], Some("\n   \n\t\n\n")),
        "only blank lines on stdin",
        BLANK,
    );
    assert_fails_clearly(&predict(root, &["   ", ""], None), "blank arguments", BLANK);
    let file = root.join("blank.txt");
    std::fs::write(&file, "\n \n").unwrap();
    assert_fails_clearly(
        &predict(root, &["--file", file.to_str().unwrap()], None),
        "a file of blank lines",
        BLANK,
    );
    let file = root.join("empty.txt");
    std::fs::write(&file, "").unwrap();
    assert_fails_clearly(
        &predict(root, &["--file", file.to_str().unwrap()], None),
        "an empty file",
        EMPTY,
    );
}

#[test]
fn texts_get_a_label_and_a_probability_each() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let texts = [
        "A wonderful, moving film with a superb cast.",
        "Dull plot, wooden acting; I walked out halfway.",
        "Not bad at all.",
    ];
    let want = expected_probs(root, &texts);
    let o = predict(root, &texts, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), texts.len(), "{out}");
    for ((line, text), p) in lines.iter().zip(texts).zip(&want) {
        let e = ExamplePrediction::new(text, *p, 0.5);
        let (head, printed_text) = line.split_once('\t').unwrap_or_else(|| panic!("{line}"));
        assert_eq!(printed_text, text);
        let (label, prob) = head.split_once(' ').unwrap();
        assert_eq!(label, e.label, "{line}");
        assert!(label == "Positive" || label == "Negative");
        let prob: f64 = prob
            .trim_start_matches('(')
            .trim_end_matches(')')
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        assert!(
            (prob - e.probability).abs() <= 5e-5,
            "{line}: {}",
            e.probability
        );
        assert!(
            (0.5..=1.0).contains(&prob),
            "the predicted label's probability: {line}"
        );
    }

    // The same texts from stdin (blank lines skipped) and from --file.
    let piped = predict(root, &[], Some(&format!("\n{}\n\n", texts.join("\n"))));
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_eq!(stdout(&piped), out);
    let file = root.join("texts.txt");
    std::fs::write(&file, texts.join("\n")).unwrap();
    let from_file = predict(root, &["--file", file.to_str().unwrap()], None);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert_eq!(stdout(&from_file), out);
}

#[test]
fn json_prints_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let texts = ["Great fun.", "The worst movie I have seen this year."];
    let want = expected_probs(root, &texts);
    let o = predict(root, &["--json", texts[0], texts[1]], None);
    assert!(o.status.success(), "{}", stderr(&o));
    // What ran is said on stderr, so stdout holds only the JSON lines.
    assert!(
        stderr(&o).contains("predict: runs on cpu "),
        "{}",
        stderr(&o)
    );
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for ((line, text), p) in lines.iter().zip(texts).zip(&want) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["label", "prob_positive", "score", "text"], "{line}");
        let e: JsonLine = serde_json::from_value(value).unwrap();
        assert_eq!(e.text, text);
        assert!((e.prob_positive - p).abs() < 1e-9, "{line} vs {p}");
        // As transformers' pipeline: the id2label name and that label's probability.
        let (label, score) = if *p >= 0.5 {
            ("positive", *p)
        } else {
            ("negative", 1.0 - p)
        };
        assert_eq!(e.label, label, "{line}");
        assert!((e.score - score).abs() < 1e-9, "{line}");
    }
}

/// `--model <export>` without an adapter: the merged export classifies as base + adapter do.
#[test]
fn predict_loads_a_merged_export_without_an_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let texts = [
        "Great fun.",
        "The worst movie I have seen this year.",
        "Meh.",
    ];
    let want = expected_probs(root, &texts);
    let ckpt = lora_classifier::Checkpoint::open(&bert_base()).unwrap();
    let model = lora_classifier::SequenceClassifier::load_adapter(
        &ckpt,
        &bert_adapter(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let export = root.join("export");
    let options = lora_classifier::ExportOptions {
        dtype: lora_classifier::ExportDtype::F32,
        max_len: 24,
        truncation: lora_classifier::Truncation::Head,
    };
    model.export_merged(&ckpt, &export, options).unwrap();
    let o = Command::new(PREDICT)
        .arg("--config")
        .arg(config_file(root))
        .arg("--model")
        .arg(&export)
        .arg("--json")
        .args(texts)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let got: Vec<JsonLine> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), texts.len(), "{out}");
    for (line, p) in got.iter().zip(&want) {
        assert!((line.prob_positive - p).abs() < 1e-6, "{line:?} vs {p}");
    }
}

#[test]
fn without_an_adapter_predict_names_the_stage_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let o = Command::new(PREDICT)
        .arg("--config")
        .arg(&config)
        .arg("Some text.")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("just train") && err.contains("--adapter"),
        "{err}"
    );
}
