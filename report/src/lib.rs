//! Renders the evaluation report from typed, in-memory inputs: five figures (PNG and/or SVG,
//! drawn with plotters), a self-contained `report.html` (figures embedded as base64 data URIs,
//! inline CSS, no network) and `report.md` (figures linked by relative path).
//!
//! - `font`: the embedded figure font (or the one [`FONT_ENV`] names);
//! - `style`: what every figure shares (colours, sizes, axes, legends);
//! - `figures`: one module per figure, and drawing one into a file;
//! - `crisp_text`: correctly spaced text in bitmap figures;
//! - `summary`, `html`, `markdown`: the documents' content, and each page with its escaping;
//! - [`stage`]: the report stage (gathering the artifacts, stamps); [`cli`]: its command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub mod cli;
mod crisp_text;
mod figures;
mod font;
mod html;
mod markdown;
pub mod stage;
mod style;
mod summary;

/// An experiment's runs compared in one figure (`imdb-lora exp show`).
pub use figures::experiment::{render as render_experiment, RunCurves};
pub use font::{register_font, FontSource, FONT_ENV};
/// The training history's rows: the training loop's own records (`choices::HistoryRecord`, one
/// definition from the loop to `history.parquet`).
pub use pipeline::history::{HistoryRow, RowKind};

use figures::FIGURES;

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct ReportInputs {
    /// Training history: one row per logged optimizer step and one per epoch.
    pub history: Vec<HistoryRow>,
    /// Test-split metrics.
    pub metrics: metrics::Metrics,
    /// Test labels (0 = negative, 1 = positive) and predicted P(positive), in the same order.
    pub labels: Vec<u32>,
    pub prob_positive: Vec<f64>,
    /// Titled key/value tables, shown in this order (config & seed, data counts, …).
    pub tables: Vec<(String, Vec<(String, String)>)>,
    /// The effective config, shown verbatim.
    pub config_yaml: String,
    /// Example predictions: (review text, predicted label "Positive"/"Negative", P(positive)).
    pub examples: Vec<(String, String, f64)>,
    /// Formats to write every figure in; the HTML embeds the PNG if written, else the SVG.
    pub formats: Vec<ImageFormat>,
}

/// A figure format: `report.formats`' own type.
pub use pipeline::config::ImageFormat;

/// The media type of a figure in `format`, for the HTML's data URIs.
fn mime(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Svg => "image/svg+xml",
    }
}

/// Renders every figure in every requested format, then `report.html` and `report.md`, into
/// `out_dir` (created if missing), each file written atomically. Returns the paths written,
/// figures first.
pub fn render(inputs: &ReportInputs, out_dir: &Path) -> Result<Vec<PathBuf>> {
    if inputs.formats.is_empty() {
        bail!("no image format requested: the report needs PNG or SVG");
    }
    if inputs.labels.len() != inputs.prob_positive.len() {
        bail!(
            "{} labels but {} probabilities",
            inputs.labels.len(),
            inputs.prob_positive.len()
        );
    }
    register_font()?;

    // Each format once, PNG first.
    let formats: Vec<ImageFormat> = [ImageFormat::Png, ImageFormat::Svg]
        .into_iter()
        .filter(|f| inputs.formats.contains(f))
        .collect();
    let mut written = Vec::new();
    for figure in FIGURES {
        for &format in &formats {
            let path = figure
                .save(format, inputs, out_dir)
                .with_context(|| format!("drawing {}", figure.file_name(format)))?;
            written.push(path);
        }
    }
    // The documents show one file per figure: the PNG if there is one (every viewer shows it).
    let shown = formats[0];
    let documents = [
        ("report.html", html::page(inputs, out_dir, shown)?),
        ("report.md", markdown::page(inputs, &formats, shown)),
    ];
    for (name, text) in documents {
        let path = out_dir.join(name);
        pipeline::atomic::write_bytes(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
