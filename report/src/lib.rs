//! Renders the evaluation report from typed, in-memory inputs: five figures (PNG and/or SVG,
//! drawn with plotters), a self-contained `report.html` (figures embedded as base64 data URIs,
//! inline CSS, no network) and `report.md` (figures linked by relative path).
//!
//! Plotters has no font of its own: text is measured and drawn with a TrueType font loaded at
//! run time, DejaVu Sans from the usual system paths or the file named by [`FONT_ENV`].

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ab_glyph::FontRef;
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

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

/// The training history's schema is the artifact's own (one definition, in `pipeline`).
pub use pipeline::history::{HistoryRow, RowKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Svg => "svg",
        }
    }

    fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Svg => "image/svg+xml",
        }
    }
}

/// Environment variable naming a `.ttf`/`.otf` file to use instead of DejaVu Sans.
pub const FONT_ENV: &str = "REPORT_FONT";

/// Where DejaVu Sans lives on Debian/Ubuntu, Arch and Fedora.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

/// The family every figure's text uses; the loaded font is registered under this name.
const FAMILY: &str = "sans-serif";

/// The same font, for [`CrispText`].
static FONT_REF: OnceLock<FontRef<'static>> = OnceLock::new();

pub mod cli;
mod crisp_text;
pub mod stage;
use crisp_text::CrispText;

/// Loads the figure font once per process and registers it with plotters; returns its path.
/// If [`FONT_ENV`] is set, only that file is tried, so a wrong override is not silently ignored.
pub fn register_font() -> Result<PathBuf> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
            Some(path) => vec![PathBuf::from(path)],
            None => FONT_PATHS.iter().map(PathBuf::from).collect(),
        };
        for path in &candidates {
            let Ok(bytes) = fs::read(path) else { continue };
            // plotters keeps a `&'static` font; it is loaded once, so leaking it is fine.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let invalid = || format!("{} is not a TrueType/OpenType font", path.display());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| invalid())?;
            let _ = FONT_REF.set(FontRef::try_from_slice(bytes).map_err(|_| invalid())?);
            return Ok(path.clone());
        }
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(format!(
            "no font for the report figures; tried: {}. Install DejaVu Sans (Debian: fonts-dejavu-core) or set {FONT_ENV} to a .ttf file",
            tried.join(", ")
        ))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Renders every figure in every requested format, then `report.html` and `report.md`, into
/// `out_dir` (created if missing). Returns the paths written, figures first.
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
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    // Each format once, PNG first.
    let formats: Vec<ImageFormat> = [ImageFormat::Png, ImageFormat::Svg]
        .into_iter()
        .filter(|f| inputs.formats.contains(f))
        .collect();
    let mut written = Vec::new();
    for figure in FIGURES {
        for &format in &formats {
            let path = save_figure(figure, format, inputs, out_dir)
                .with_context(|| format!("drawing {}.{}", figure.stem(), format.extension()))?;
            written.push(path);
        }
    }
    // The documents show one file per figure: the PNG if there is one (every viewer shows it).
    let shown = formats[0];
    let html = html_report(inputs, out_dir, shown)?;
    written.push(write_atomic(&out_dir.join("report.html"), html.as_bytes())?);
    let md = markdown_report(inputs, &formats, shown);
    written.push(write_atomic(&out_dir.join("report.md"), md.as_bytes())?);
    Ok(written)
}

/// `.tmp.<name>` beside `path`; keeps the extension, from which plotters picks the encoder.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".tmp.{name}"))
}

/// Writes through a temporary sibling and renames, so nobody sees a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = tmp_path(path);
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path.to_path_buf())
}

fn save_figure(
    figure: Figure,
    format: ImageFormat,
    inputs: &ReportInputs,
    out_dir: &Path,
) -> Result<PathBuf> {
    let path = out_dir.join(figure.file_name(format));
    let tmp = tmp_path(&path);
    let drawn = match format {
        ImageFormat::Png => {
            let root = CrispText(BitMapBackend::new(&tmp, figure.size())).into_drawing_area();
            figure
                .draw(&root, inputs)
                .and_then(|()| Ok(root.present()?))
        }
        ImageFormat::Svg => {
            let root = SVGBackend::new(&tmp, figure.size()).into_drawing_area();
            figure
                .draw(&root, inputs)
                .and_then(|()| Ok(root.present()?))
        }
    };
    if let Err(e) = drawn {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

#[derive(Debug, Clone, Copy)]
enum Figure {
    Loss,
    Accuracy,
    Roc,
    Confusion,
    Probabilities,
}

const FIGURES: [Figure; 5] = [
    Figure::Loss,
    Figure::Accuracy,
    Figure::Roc,
    Figure::Confusion,
    Figure::Probabilities,
];

// Tableau colours, as matplotlib uses them.
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(127, 127, 127);
const GRID: RGBColor = RGBColor(230, 230, 230);

const TITLE_SIZE: u32 = 26;
const AXIS_SIZE: u32 = 20;
const TICK_SIZE: u32 = 16;
const LEGEND_SIZE: u32 = 17;

impl Figure {
    fn stem(self) -> &'static str {
        match self {
            Figure::Loss => "loss",
            Figure::Accuracy => "val_accuracy",
            Figure::Roc => "roc_curve",
            Figure::Confusion => "confusion_matrix",
            Figure::Probabilities => "probability_histogram",
        }
    }

    fn file_name(self, format: ImageFormat) -> String {
        format!("{}.{}", self.stem(), format.extension())
    }

    fn title(self) -> &'static str {
        match self {
            Figure::Loss => "Training and validation loss",
            Figure::Accuracy => "Validation accuracy per epoch",
            Figure::Roc => "ROC curve (test split)",
            Figure::Confusion => "Confusion matrix (test split)",
            Figure::Probabilities => "Predicted probabilities by true class (test split)",
        }
    }

    /// What the figure shows, under it in the documents.
    fn caption(self) -> &'static str {
        match self {
            Figure::Loss => "Training loss at every logged step (thin line), its mean over each epoch, and the validation loss at the end of each epoch.",
            Figure::Accuracy => "Accuracy on the validation split at the end of each epoch.",
            Figure::Roc => "ROC curve of the test predictions; the dot marks the decision threshold used for the other metrics, the dashed diagonal a random classifier.",
            Figure::Confusion => "Test reviews by true and predicted class, with each count's share of its true class.",
            Figure::Probabilities => "Histogram (bins of 0.05) of the predicted probability of the positive class, separately for truly negative and truly positive reviews; the dashed line is the decision threshold.",
        }
    }

    fn size(self) -> (u32, u32) {
        match self {
            Figure::Roc | Figure::Confusion => (760, 700),
            _ => (1000, 600),
        }
    }

    fn draw<DB: DrawingBackend>(
        self,
        root: &DrawingArea<DB, Shift>,
        inputs: &ReportInputs,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        match self {
            Figure::Loss => draw_loss(root, self.title(), &inputs.history),
            Figure::Accuracy => draw_accuracy(root, self.title(), &inputs.history),
            Figure::Roc => draw_roc(root, self.title(), &inputs.metrics),
            Figure::Confusion => draw_confusion(root, self.title(), &inputs.metrics),
            Figure::Probabilities => draw_histograms(root, self.title(), inputs),
        }
    }
}

/// A chart builder with the shared caption, margins and room for axis labels.
fn chart<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FAMILY, TITLE_SIZE))
        .margin(16)
        .margin_right(32)
        .x_label_area_size(64)
        .y_label_area_size(88);
    builder
}

/// Draws the title and a note in place of a chart when there is nothing to plot.
fn no_data<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, note: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = root.dim_in_pixel();
    let centred = |size| {
        TextStyle::from((FAMILY, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
    };
    root.draw(&Text::new(title, (w as i32 / 2, 40), centred(TITLE_SIZE)))?;
    root.draw(&Text::new(
        note,
        (w as i32 / 2, h as i32 / 2),
        centred(AXIS_SIZE).color(&GREY),
    ))?;
    Ok(())
}

/// Smallest and largest finite value.
fn extent(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

fn finite(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    points
        .into_iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

fn draw_loss<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    history: &[HistoryRow],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let rows = |kind| history.iter().filter(move |r| r.kind == kind);
    let steps = finite(rows(RowKind::Step).map(|r| (r.step as f64, r.train_loss)));
    let epoch_train = finite(rows(RowKind::Epoch).map(|r| (r.step as f64, r.train_loss)));
    let epoch_val = finite(rows(RowKind::Epoch).filter_map(|r| Some((r.step as f64, r.val_loss?))));
    let all = || steps.iter().chain(&epoch_train).chain(&epoch_val);
    let (Some((x_lo, x_hi)), Some((_, y_hi))) =
        (extent(all().map(|p| p.0)), extent(all().map(|p| p.1)))
    else {
        return no_data(root, title, "no training history recorded");
    };
    let x_range = x_lo.min(0.0)..x_hi.max(x_lo + 1.0);
    let mut chart = chart(root, title).build_cartesian_2d(x_range, 0.0..(y_hi * 1.08).max(1e-3))?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("Optimizer step")
        .y_desc("Cross-entropy loss")
        .axis_desc_style((FAMILY, AXIS_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .draw()?;
    if !steps.is_empty() {
        let style = BLUE.mix(0.45).stroke_width(1);
        chart
            .draw_series(LineSeries::new(steps, style))?
            .label("train loss (per step)")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
    }
    for (points, color, label) in [
        (epoch_train, ORANGE, "train loss (epoch mean)"),
        (epoch_val, GREEN, "validation loss (epoch end)"),
    ] {
        if points.is_empty() {
            continue;
        }
        let markers: Vec<_> = points
            .iter()
            .map(|&p| Circle::new(p, 5, color.filled()))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))?
            .label(label)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (24, 0)], color.stroke_width(3))
                    + Circle::new((12, 0), 5, color.filled())
            });
        chart.draw_series(markers)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Draws the series labels in a framed box.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .margin(12)
        .legend_area_size(32)
        .label_font((FAMILY, LEGEND_SIZE))
        .background_style(WHITE)
        .border_style(GREY)
        .draw()?;
    Ok(())
}

fn draw_accuracy<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    history: &[HistoryRow],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = finite(
        history
            .iter()
            .filter(|r| r.kind == RowKind::Epoch)
            .filter_map(|r| Some((f64::from(r.epoch), r.val_accuracy?))),
    );
    let (Some((e_lo, e_hi)), Some((a_lo, a_hi))) = (
        extent(points.iter().map(|p| p.0)),
        extent(points.iter().map(|p| p.1)),
    ) else {
        return no_data(root, title, "no validation accuracy recorded");
    };
    // Zoom on the values, on a 0.05 grid, leaving room above the points for their labels.
    let y_lo = ((a_lo - 0.03) * 20.0).floor().max(0.0) / 20.0;
    let y_hi = (((a_hi + 0.04) * 20.0).ceil() / 20.0)
        .min(1.0)
        .max(y_lo + 0.05);
    let mut chart =
        chart(root, title).build_cartesian_2d((e_lo - 0.5)..(e_hi + 0.5), y_lo..y_hi)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_labels(((e_hi - e_lo) as usize + 2).min(12))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.2}"))
        .x_desc("Epoch")
        .y_desc("Validation accuracy")
        .axis_desc_style((FAMILY, AXIS_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .draw()?;
    chart
        .draw_series(LineSeries::new(points.clone(), GREEN.stroke_width(3)))?
        .label("validation accuracy")
        .legend(|(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new([(0, 0), (24, 0)], GREEN.stroke_width(3))
                + Circle::new((12, 0), 5, GREEN.filled())
        });
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 6, GREEN.filled())))?;
    let label =
        TextStyle::from((FAMILY, TICK_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(points.iter().map(|&(e, a)| {
        EmptyElement::at((e, a)) + Text::new(format!("{a:.4}"), (0, -12), label.clone())
    }))?;
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn draw_roc<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    m: &metrics::Metrics,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (Some(curve), Some(auc)) = (&m.roc_curve, m.roc_auc) else {
        return no_data(
            root,
            title,
            "ROC undefined: the test labels hold a single class",
        );
    };
    let mut chart = chart(root, title).build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_desc("False positive rate")
        .y_desc("True positive rate")
        .axis_desc_style((FAMILY, AXIS_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .x_label_formatter(&|x| format!("{x:.1}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    let chance = GREY.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            10,
            8,
            chance,
        ))?
        .label("chance (AUC = 0.5)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], chance));
    let roc = curve.fpr.iter().copied().zip(curve.tpr.iter().copied());
    chart
        .draw_series(LineSeries::new(roc, BLUE.stroke_width(3)))?
        .label(format!("ROC curve (AUC = {auc:.4})"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], BLUE.stroke_width(3)));
    // The operating point of the threshold the other metrics use.
    let cm = &m.confusion_matrix;
    let fpr = cm.fp as f64 / (cm.fp + cm.tn).max(1) as f64;
    let tpr = cm.tp as f64 / (cm.tp + cm.fn_).max(1) as f64;
    chart
        .draw_series([Circle::new((fpr, tpr), 7, RED.filled())])?
        .label(format!(
            "threshold {} (FPR {fpr:.3}, TPR {tpr:.3})",
            m.threshold
        ))
        .legend(|(x, y)| Circle::new((x + 12, y), 6, RED.filled()));
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    m: &metrics::Metrics,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // Cell (predicted p, true t) is centred on (p, 1 - t): true "negative" is the top row.
    let matrix = m.confusion_matrix.as_matrix();
    let max = matrix.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let class = |v: f64| match v.round() as i64 {
        0 => "negative",
        1 => "positive",
        _ => "",
    };
    let tick = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            class(*v).to_string()
        } else {
            String::new()
        }
    };
    let tick_flipped = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            class(1.0 - v).to_string()
        } else {
            String::new()
        }
    };
    // A wider label area keeps "True label" clear of the row names.
    let mut chart = chart(root, title)
        .y_label_area_size(120)
        .build_cartesian_2d(-0.5..1.5, -0.5..1.5)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(3)
        .y_labels(3)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick_flipped)
        .x_desc("Predicted label")
        .y_desc("True label")
        .axis_desc_style((FAMILY, AXIS_SIZE))
        .label_style((FAMILY, AXIS_SIZE))
        .draw()?;
    for (t, row) in matrix.iter().enumerate() {
        let row_total = row.iter().sum::<u64>().max(1) as f64;
        for (p, &count) in row.iter().enumerate() {
            let (x, y) = (p as f64, 1.0 - t as f64);
            // White to dark blue by count; text switches to white on dark cells.
            let shade = count as f64 / max;
            let mix = |light: u8, dark: u8| {
                (light as f64 + (dark as f64 - light as f64) * shade).round() as u8
            };
            let fill = RGBColor(mix(247, 8), mix(251, 48), mix(255, 107));
            let ink = if shade > 0.5 { WHITE } else { BLACK };
            chart.draw_series([Rectangle::new(
                [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                fill.filled(),
            )])?;
            let centred = |size| {
                TextStyle::from((FAMILY, size).into_font())
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center))
            };
            let share = 100.0 * count as f64 / row_total;
            chart.draw_series([EmptyElement::at((x, y))
                + Text::new(count.to_string(), (0, -14), centred(34))
                + Text::new(
                    format!("{share:.1}% of true {}", class(t as f64)),
                    (0, 22),
                    centred(TICK_SIZE),
                )])?;
        }
    }
    // Cell borders, drawn last so that they stay visible.
    let border = ShapeStyle::from(&WHITE).stroke_width(3);
    chart.draw_series([
        PathElement::new([(0.5, -0.5), (0.5, 1.5)], border),
        PathElement::new([(-0.5, 0.5), (1.5, 0.5)], border),
    ])?;
    Ok(())
}

fn draw_histograms<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    inputs: &ReportInputs,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    const BINS: usize = 20;
    let mut counts = [[0u64; BINS]; 2];
    for (&label, &p) in inputs.labels.iter().zip(&inputs.prob_positive) {
        if p.is_finite() && label <= 1 {
            // p == 1.0 belongs to the last bin, like numpy's histogram.
            let bin = ((p.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1);
            counts[label as usize][bin] += 1;
        }
    }
    let max = counts.iter().flatten().copied().max().unwrap_or(0);
    if max == 0 {
        return no_data(root, title, "no test predictions");
    }
    let y_hi = max as f64 * 1.35;
    let mut chart = chart(root, title).build_cartesian_2d(0.0..1.0, 0.0..y_hi)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_labels(11)
        .x_label_formatter(&|x| format!("{x:.1}"))
        // Counts are whole: small ones get no fractional ticks.
        .y_labels((max as usize + 1).clamp(2, 10))
        .y_label_formatter(&|y| {
            if (y - y.round()).abs() < 1e-9 {
                format!("{y:.0}")
            } else {
                String::new()
            }
        })
        .x_desc("Predicted probability of the positive class")
        .y_desc("Number of test reviews")
        .axis_desc_style((FAMILY, AXIS_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .draw()?;
    let width = 1.0 / BINS as f64;
    for (class, color, label) in [
        (0, RED, "true negative reviews"),
        (1, BLUE, "true positive reviews"),
    ] {
        let n: u64 = counts[class].iter().sum();
        let bars = counts[class]
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(move |(i, &c)| {
                let x = i as f64 * width;
                Rectangle::new([(x, 0.0), (x + width, c as f64)], color.mix(0.45).filled())
            });
        chart
            .draw_series(bars)?
            .label(format!("{label} (n = {n})"))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 7), (x + 24, y + 7)], color.mix(0.45).filled())
            });
        // Outline each class's bars so the overlap stays readable.
        let outline = counts[class].iter().enumerate().flat_map(move |(i, &c)| {
            let x = i as f64 * width;
            [(x, c as f64), (x + width, c as f64)]
        });
        let outline: Vec<(f64, f64)> = [(0.0, 0.0)]
            .into_iter()
            .chain(outline)
            .chain([(1.0, 0.0)])
            .collect();
        if n > 0 {
            chart.draw_series([PathElement::new(outline, color.stroke_width(2))])?;
        }
    }
    let t = inputs.metrics.threshold;
    if (0.0..=1.0).contains(&t) {
        let style = BLACK.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new([(t, 0.0), (t, y_hi)], 8, 6, style))?
            .label(format!("decision threshold = {t}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
    }
    legend(&mut chart, SeriesLabelPosition::UpperMiddle)
}

/// `&`, `<`, `>` and quotes escaped, for HTML text and attributes.
fn html_escape(s: &str) -> String {
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

/// One Markdown table cell: no line breaks, no column separators, no raw HTML
/// (IMDb reviews contain literal `<br />`).
fn md_cell(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Long reviews would swamp the report: keep the first `max` characters.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
        None => text.to_string(),
    }
}

const EXAMPLE_CHARS: usize = 600;

/// Headline numbers of the test split, as a key/value table.
fn metrics_rows(m: &metrics::Metrics) -> Vec<(String, String)> {
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

/// Confusion matrix rows: true class, predicted negative, predicted positive.
fn confusion_rows(m: &metrics::Metrics) -> [[String; 3]; 2] {
    let [[tn, fp], [fn_, tp]] = m.confusion_matrix.as_matrix();
    [
        ["true negative".into(), tn.to_string(), fp.to_string()],
        ["true positive".into(), fn_.to_string(), tp.to_string()],
    ]
}

fn example_rows(inputs: &ReportInputs) -> Vec<[String; 3]> {
    inputs
        .examples
        .iter()
        .map(|(text, label, p)| {
            // IMDb marks paragraphs with literal `<br />`: show them as line breaks.
            let text = ["<br />", "<br/>", "<br>"]
                .iter()
                .fold(text.clone(), |t, br| t.replace(br, "\n"));
            [
                truncate(&text, EXAMPLE_CHARS),
                label.clone(),
                format!("{p:.4}"),
            ]
        })
        .collect()
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

fn html_table(header: &[&str], rows: &[Vec<String>], class: &str) -> String {
    let mut s = format!("<table class=\"{class}\"><thead><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", html_escape(h));
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
                html_escape(cell)
            );
        }
        s.push_str("</tr>\n");
    }
    s + "</tbody></table>\n"
}

fn key_value_rows(rows: &[(String, String)]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect()
}

fn html_report(inputs: &ReportInputs, out_dir: &Path, shown: ImageFormat) -> Result<String> {
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
    h += &html_table(
        &["Metric", "Value"],
        &key_value_rows(&metrics_rows(m)),
        "kv",
    );
    h.push_str("</div>\n<div>\n<h3>Confusion matrix</h3>\n");
    let cm: Vec<Vec<String>> = confusion_rows(m).iter().map(|r| r.to_vec()).collect();
    h += &html_table(&["", "predicted negative", "predicted positive"], &cm, "cm");
    h.push_str("</div>\n</div>\n<h3>Classification report</h3>\n");
    let _ = writeln!(
        h,
        "<pre>{}</pre>",
        html_escape(&m.classification_report_text)
    );

    if !inputs.tables.is_empty() {
        h.push_str("<h2>Run summary</h2>\n<div class=\"tables\">\n");
        for (title, rows) in &inputs.tables {
            let _ = writeln!(h, "<div>\n<h3>{}</h3>", html_escape(title));
            h += &html_table(&["Name", "Value"], &key_value_rows(rows), "kv");
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
            shown.mime(),
            html_escape(figure.title()),
            html_escape(figure.caption()),
        );
    }

    if !inputs.examples.is_empty() {
        h.push_str("<h2>Example predictions</h2>\n");
        let rows: Vec<Vec<String>> = example_rows(inputs).into_iter().map(Vec::from).collect();
        h += &html_table(&["Review", "Prediction", "P(positive)"], &rows, "examples");
    }
    let _ = write!(
        h,
        "<h2>Configuration</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        html_escape(&inputs.config_yaml)
    );
    Ok(h)
}

fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut s = line(header.iter().map(|h| md_cell(h)).collect());
    s += &line(header.iter().map(|_| "---".to_string()).collect());
    for row in rows {
        s += &line(row.iter().map(|c| md_cell(c)).collect());
    }
    s + "\n"
}

/// A code fence longer than any backtick run in `text`.
fn fenced(text: &str, lang: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{lang}\n{}\n{fence}\n\n", text.trim_end())
}

fn markdown_report(inputs: &ReportInputs, formats: &[ImageFormat], shown: ImageFormat) -> String {
    let m = &inputs.metrics;
    let mut s = String::from("# IMDb sentiment classifier: evaluation report\n\n");
    s += "LoRA fine-tuned transformer classifying reviews as positive or negative; metrics on the test split.\n\n";
    s += "## Test metrics\n\n";
    s += &md_table(&["Metric", "Value"], &key_value_rows(&metrics_rows(m)));
    s += "### Confusion matrix\n\n";
    let cm: Vec<Vec<String>> = confusion_rows(m).iter().map(|r| r.to_vec()).collect();
    s += &md_table(&["", "predicted negative", "predicted positive"], &cm);
    s += "### Classification report\n\n";
    s += &fenced(&m.classification_report_text, "text");
    if !inputs.tables.is_empty() {
        s += "## Run summary\n\n";
        for (title, rows) in &inputs.tables {
            let _ = write!(s, "### {}\n\n", md_cell(title));
            s += &md_table(&["Name", "Value"], &key_value_rows(rows));
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
        let rows: Vec<Vec<String>> = example_rows(inputs).into_iter().map(Vec::from).collect();
        s += &md_table(&["Review", "Prediction", "P(positive)"], &rows);
    }
    s += "## Configuration\n\n";
    s += &fenced(&inputs.config_yaml, "yaml");
    s
}
