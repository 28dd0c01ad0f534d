//! `report.md`: the same content as the HTML page, figures linked by relative path, every
//! piece of user text escaped for Markdown.

use std::fmt::Write as _;

use crate::figures::FIGURES;
use crate::summary::{
    confusion_rows, example_rows, key_value_rows, metrics_rows, CONFUSION_HEADER, EXAMPLES_HEADER,
};
use crate::{ImageFormat, ReportInputs};

/// One Markdown table cell: no line breaks, no column separators, no raw HTML
/// (IMDb reviews contain literal `<br />`).
fn cell(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut s = line(header.iter().map(|h| cell(h)).collect());
    s += &line(header.iter().map(|_| "---".to_string()).collect());
    for row in rows {
        s += &line(row.iter().map(|c| cell(c)).collect());
    }
    s + "\n"
}

/// A code fence longer than any backtick run in `text`.
fn fenced(text: &str, lang: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{lang}\n{}\n{fence}\n\n", text.trim_end())
}

/// The page; each figure shown as its `shown` file and linked in the other `formats`.
pub(crate) fn page(inputs: &ReportInputs, formats: &[ImageFormat], shown: ImageFormat) -> String {
    let m = &inputs.metrics;
    let mut s = String::from("# IMDb sentiment classifier: evaluation report\n\n");
    s += "LoRA fine-tuned transformer classifying reviews as positive or negative; metrics on the test split.\n\n";
    s += "## Test metrics\n\n";
    s += &table(&["Metric", "Value"], &key_value_rows(&metrics_rows(m)));
    s += "### Confusion matrix\n\n";
    s += &table(&CONFUSION_HEADER, &confusion_rows(m));
    s += "### Classification report\n\n";
    s += &fenced(&m.classification_report_text, "text");
    if !inputs.tables.is_empty() {
        s += "## Run summary\n\n";
        for (title, rows) in &inputs.tables {
            let _ = write!(s, "### {}\n\n", cell(title));
            s += &table(&["Name", "Value"], &key_value_rows(rows));
        }
    }
    s += "## Figures\n\n";
    for figure in FIGURES {
        let (title, file) = (figure.title(), figure.file_name(shown));
        let _ = write!(
            s,
            "### {title}\n\n![{title}]({file})\n\n{}\n\n",
            figure.caption()
        );
        let others: Vec<String> = formats
            .iter()
            .filter(|&&f| f != shown)
            .map(|&f| {
                format!(
                    "[{}]({})",
                    f.extension().to_uppercase(),
                    figure.file_name(f)
                )
            })
            .collect();
        if !others.is_empty() {
            let _ = write!(s, "Also as {}.\n\n", others.join(", "));
        }
    }
    if !inputs.examples.is_empty() {
        s += "## Example predictions\n\n";
        s += &table(&EXAMPLES_HEADER, &example_rows(inputs));
    }
    s += "## Configuration\n\n";
    s += &fenced(&inputs.config_yaml, "yaml");
    s
}
