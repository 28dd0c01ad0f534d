//! Checks every metric against scikit-learn's answers in fixtures/metrics (made by
//! fixtures/generate.py).

use metrics::{evaluate, ClassScores, Metrics, RocCurve};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn read(name: &str) -> String {
    let path = test_support::fixtures_dir().join("metrics").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `cases.csv`: a `label,score` header, then one sample per line.
fn cases() -> (Vec<u32>, Vec<f64>) {
    let text = read("cases.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next().map(str::trim), Some("label,score"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (label, score) = l.trim().split_once(',').expect("two columns");
            (label.parse::<u32>().unwrap(), score.parse::<f64>().unwrap())
        })
        .unzip()
}

fn expected() -> Value {
    serde_json::from_str(&read("expected.json")).unwrap()
}

fn metrics() -> Metrics {
    let (labels, scores) = cases();
    evaluate(&labels, &scores, expected()["threshold"].as_f64().unwrap()).unwrap()
}

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOL, "{what}: got {got}, want {want}");
}

fn check_scores(what: &str, got: &ClassScores, want: &Value) {
    close(
        &format!("{what} precision"),
        got.precision,
        want["precision"].as_f64().unwrap(),
    );
    close(
        &format!("{what} recall"),
        got.recall,
        want["recall"].as_f64().unwrap(),
    );
    close(
        &format!("{what} f1-score"),
        got.f1_score,
        want["f1-score"].as_f64().unwrap(),
    );
    assert_eq!(
        got.support as f64,
        want["support"].as_f64().unwrap(),
        "{what} support"
    );
}

#[test]
fn fixture_has_2000_cases_with_ties() {
    let (labels, scores) = cases();
    assert_eq!(labels.len(), 2000);
    let mut distinct = scores.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert!(
        distinct.len() < scores.len(),
        "the fixture is meant to contain ties"
    );
}

#[test]
fn accuracy_and_confusion_matrix() {
    let (m, want) = (metrics(), expected());
    close("accuracy", m.accuracy, want["accuracy"].as_f64().unwrap());
    let cm: [[u64; 2]; 2] = serde_json::from_value(want["confusion_matrix"].clone()).unwrap();
    assert_eq!(m.confusion_matrix.as_matrix(), cm);
    assert_eq!(m.n_samples, 2000);
}

#[test]
fn classification_report_dict() {
    let (m, want) = (metrics(), expected());
    let (r, w) = (&m.classification_report, &want["report"]);
    check_scores("negative", &r.negative, &w["negative"]);
    check_scores("positive", &r.positive, &w["positive"]);
    check_scores("macro avg", &r.macro_avg, &w["macro avg"]);
    check_scores("weighted avg", &r.weighted_avg, &w["weighted avg"]);
    close(
        "report accuracy",
        r.accuracy,
        w["accuracy"].as_f64().unwrap(),
    );

    // Serialised, the report has sklearn's output_dict keys.
    let ours = serde_json::to_value(r).unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(w));
    assert_eq!(keys(&ours["negative"]), keys(&w["negative"]));
}

#[test]
fn classification_report_text_is_identical() {
    let m = metrics();
    assert_eq!(
        m.classification_report_text,
        read("classification_report.txt")
    );
    assert_eq!(
        m.classification_report.to_text(["negative", "positive"], 4),
        m.classification_report_text
    );
}

#[test]
fn roc_auc() {
    let (m, want) = (metrics(), expected());
    close(
        "roc_auc",
        m.roc_auc.unwrap(),
        want["roc_auc"].as_f64().unwrap(),
    );
}

#[test]
fn roc_curve_arrays() {
    let (m, want) = (metrics(), expected());
    let got = m.roc_curve.unwrap();
    // The fixture stores the first threshold as "inf", the convention RocCurve also uses.
    let want: RocCurve = serde_json::from_value(want["roc_curve"].clone()).unwrap();
    assert_eq!(want.thresholds.len(), 102, "fixture shape");
    for (name, g, w) in [
        ("fpr", &got.fpr, &want.fpr),
        ("tpr", &got.tpr, &want.tpr),
        ("thresholds", &got.thresholds, &want.thresholds),
    ] {
        assert_eq!(g.len(), w.len(), "{name} length");
        for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
            if name == "thresholds" {
                // Thresholds are input scores (or +inf), so they must match bit for bit.
                assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: got {g}, want {w}");
            } else {
                close(&format!("{name}[{i}]"), g, w);
            }
        }
    }
    assert_eq!(got.thresholds[0], f64::INFINITY);
}

#[test]
fn metrics_json_round_trip() {
    let m = metrics();
    let json = serde_json::to_string_pretty(&m).unwrap();
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["roc_curve"]["thresholds"][0], "inf");
    assert_eq!(v["confusion_matrix"]["fn"], 165);
    let back: Metrics = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
}
