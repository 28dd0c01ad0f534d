//! `report.html`: one self-contained page (inline CSS, figures embedded as base64 data URIs,
//! no scripts, nothing fetched), every piece of user text escaped.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;

use crate::figures::FIGURES;
use crate::summary::{
    confusion_rows, example_rows, key_value_rows, metrics_rows, CONFUSION_HEADER, EXAMPLES_HEADER,
};
use crate::{ImageFormat, ReportInputs};

/// `&`, `<`, `>` and quotes escaped, for HTML text and attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; color: #222;
       max-width: 1040px; margin: 0 auto; padding: 24px; line-height: 1.45; }
h1 { font-size: 1.8em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 10px 18px; min-width: 140px; }
.card .value { font-size: 1.6em; font-weight: 600; }
.card .name { color: #666; font-size: 0.9em; }
.tables { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.examples td:first-child { max-width: 720px; font-size: 0.92em; white-space: pre-line; }
pre { background: #f6f8fa; border: 1px solid #e3e6e8; border-radius: 6px; padding: 12px;
      overflow-x: auto; font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace;
      font-size: 14px; }
figure { margin: 24px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; margin-top: 6px; }
";

fn table(header: &[&str], rows: &[Vec<String>], class: &str) -> String {
    let mut s = format!("<table class=\"{class}\"><thead><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>\n");
    for row in rows {
        s.push_str("<tr>");
        for cell in row {
            // Right-align numbers so that digits line up.
            let num = cell.parse::<f64>().is_ok();
            let _ = write!(
                s,
                "<td{}>{}</td>",
                if num { " class=\"num\"" } else { "" },
                escape(cell)
            );
        }
        s.push_str("</tr>\n");
    }
    s + "</tbody></table>\n"
}

/// The page, embedding each figure's `shown` file from `out_dir`.
pub(crate) fn page(inputs: &ReportInputs, out_dir: &Path, shown: ImageFormat) -> Result<String> {
    let m = &inputs.metrics;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>IMDb sentiment classifier: evaluation report</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <h1>IMDb sentiment classifier: evaluation report</h1>\n\
         <p>LoRA fine-tuned transformer classifying reviews as positive or negative; metrics on the test split.</p>\n"
    );
    let auc = m.roc_auc.map_or("n/a".into(), |a| format!("{a:.4}"));
    h.push_str("<div class=\"cards\">\n");
    for (name, value) in [
        ("Accuracy", format!("{:.4}", m.accuracy)),
        ("ROC-AUC", auc),
        (
            "Macro F1",
            format!("{:.4}", m.classification_report.macro_avg.f1_score),
        ),
        ("Test reviews", m.n_samples.to_string()),
    ] {
        let _ = writeln!(h, "<div class=\"card\"><div class=\"value\">{value}</div><div class=\"name\">{name}</div></div>");
    }
    h.push_str("</div>\n");

    h.push_str("<h2>Test metrics</h2>\n<div class=\"tables\">\n<div>\n");
    h += &table(
        &["Metric", "Value"],
        &key_value_rows(&metrics_rows(m)),
        "kv",
    );
    h.push_str("</div>\n<div>\n<h3>Confusion matrix</h3>\n");
    h += &table(&CONFUSION_HEADER, &confusion_rows(m), "cm");
    h.push_str("</div>\n</div>\n<h3>Classification report</h3>\n");
    let _ = writeln!(h, "<pre>{}</pre>", escape(&m.classification_report_text));

    if !inputs.tables.is_empty() {
        h.push_str("<h2>Run summary</h2>\n<div class=\"tables\">\n");
        for (title, rows) in &inputs.tables {
            let _ = writeln!(h, "<div>\n<h3>{}</h3>", escape(title));
            h += &table(&["Name", "Value"], &key_value_rows(rows), "kv");
            h.push_str("</div>\n");
        }
        h.push_str("</div>\n");
    }

    h.push_str("<h2>Figures</h2>\n");
    for figure in FIGURES {
        let path = out_dir.join(figure.file_name(shown));
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        let _ = writeln!(
            h,
            "<figure id=\"{}\"><img src=\"data:{};base64,{data}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
            figure.stem(),
            crate::mime(shown),
            escape(figure.title()),
            escape(figure.caption()),
        );
    }

    if !inputs.examples.is_empty() {
        h.push_str("<h2>Example predictions</h2>\n");
        h += &table(&EXAMPLES_HEADER, &example_rows(inputs), "examples");
    }
    let _ = write!(
        h,
        "<h2>Configuration</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(&inputs.config_yaml)
    );
    Ok(h)
}
