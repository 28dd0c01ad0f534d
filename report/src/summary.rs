//! What both documents say, as plain rows: the headline metrics, the confusion matrix and the
//! example predictions. `html` and `markdown` each escape and lay them out.

use crate::ReportInputs;

/// Characters of a review shown in the examples table.
const EXAMPLE_CHARS: usize = 600;

/// Long reviews would swamp the report: keep the first `max` characters.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
        None => text.to_string(),
    }
}

/// Headline numbers of the test split, as a key/value table.
pub(crate) fn metrics_rows(m: &metrics::Metrics) -> Vec<(String, String)> {
    let r = &m.classification_report;
    let auc = m
        .roc_auc
        .map_or("undefined (one class only)".into(), |a| format!("{a:.4}"));
    [
        ("Test reviews", m.n_samples.to_string()),
        (
            "Decision threshold",
            format!("P(positive) ≥ {}", m.threshold),
        ),
        ("Accuracy", format!("{:.4}", m.accuracy)),
        ("ROC-AUC", auc),
        ("Macro F1", format!("{:.4}", r.macro_avg.f1_score)),
        (
            "Precision (positive)",
            format!("{:.4}", r.positive.precision),
        ),
        ("Recall (positive)", format!("{:.4}", r.positive.recall)),
        ("F1 (positive)", format!("{:.4}", r.positive.f1_score)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The confusion matrix's header and rows: true class, predicted negative, predicted positive.
pub(crate) const CONFUSION_HEADER: [&str; 3] = ["", "predicted negative", "predicted positive"];

pub(crate) fn confusion_rows(m: &metrics::Metrics) -> Vec<Vec<String>> {
    let [[tn, fp], [fn_, tp]] = m.confusion_matrix.as_matrix();
    vec![
        vec!["true negative".into(), tn.to_string(), fp.to_string()],
        vec!["true positive".into(), fn_.to_string(), tp.to_string()],
    ]
}

pub(crate) const EXAMPLES_HEADER: [&str; 3] = ["Review", "Prediction", "P(positive)"];

/// Review (shortened, paragraph breaks as line breaks), prediction, P(positive).
pub(crate) fn example_rows(inputs: &ReportInputs) -> Vec<Vec<String>> {
    inputs
        .examples
        .iter()
        .map(|(text, label, p)| {
            // IMDb marks paragraphs with literal `<br />`: show them as line breaks.
            let text = ["<br />", "<br/>", "<br>"]
                .iter()
                .fold(text.clone(), |t, br| t.replace(br, "\n"));
            vec![
                truncate(&text, EXAMPLE_CHARS),
                label.clone(),
                format!("{p:.4}"),
            ]
        })
        .collect()
}

pub(crate) fn key_value_rows(rows: &[(String, String)]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect()
}
