//! An experiment's runs side by side (`imdb-lora exp show`): validation accuracy per epoch and
//! the loss curves of every run, overlaid, one colour per run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Drawing;
use crate::style::{axes, chart, extent, finite, legend, line_with_dots, no_data, whole};
use crate::{HistoryRow, ImageFormat, RowKind};

/// One run as the comparison plots it.
#[derive(Debug, Clone)]
pub struct RunCurves {
    /// Its legend entry (`#1`, as the table numbers the runs).
    pub label: String,
    pub history: Vec<HistoryRow>,
}

/// matplotlib's `tab10`, repeated past ten runs.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The file stem of the comparison.
pub const STEM: &str = "runs";

struct Comparison<'a>(&'a [RunCurves]);

/// What a panel plots of a history row (`None`: nothing).
type Value<'a> = &'a dyn Fn(&HistoryRow) -> Option<f64>;

/// Per run, its epoch rows' `(epoch, value)` points.
fn per_epoch(run: &RunCurves, value: impl Fn(&HistoryRow) -> Option<f64>) -> Vec<(f64, f64)> {
    finite(
        run.history
            .iter()
            .filter(|r| r.kind == RowKind::Epoch)
            .filter_map(|r| Some((f64::from(r.epoch), value(r)?))),
    )
}

fn panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    runs: &[RunCurves],
    value: Value,
    train: Option<Value>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| per_epoch(r, value)).collect();
    let trains: Vec<Vec<(f64, f64)>> = match train {
        Some(f) => runs.iter().map(|r| per_epoch(r, f)).collect(),
        None => Vec::new(),
    };
    let all = || curves.iter().chain(&trains).flatten();
    let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) =
        (extent(all().map(|p| p.0)), extent(all().map(|p| p.1)))
    else {
        return no_data(root, title, "no run has finished an epoch yet");
    };
    let pad = ((y_hi - y_lo) * 0.08).max(5e-3);
    // Enough decimals that neighbouring ticks differ (about ten ticks over the range).
    let decimals = (-((y_hi - y_lo + 2.0 * pad) / 10.0).log10())
        .ceil()
        .clamp(2.0, 5.0) as usize;
    let mut chart = chart(root, title)
        .build_cartesian_2d((x_lo - 0.3)..(x_hi + 0.3), (y_lo - pad)..(y_hi + pad))?;
    axes(&mut chart)
        .x_labels(((x_hi - x_lo) as usize + 2).min(12))
        .x_label_formatter(&|&x| whole(x, |x| format!("{x:.0}")))
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .x_desc("Epoch")
        .y_desc(y_desc)
        .draw()?;
    for (i, (run, points)) in runs.iter().zip(&curves).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if let Some(train) = trains.get(i).filter(|t| !t.is_empty()) {
            chart.draw_series(LineSeries::new(
                train.clone(),
                color.mix(0.5).stroke_width(1),
            ))?;
        }
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
            .label(run.label.clone())
            .legend(move |at| line_with_dots(color, at));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

impl Drawing for Comparison<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
        panel(
            &left,
            "Validation accuracy per epoch",
            "Validation accuracy",
            self.0,
            &|r| r.val_accuracy,
            None,
        )?;
        panel(
            &right,
            "Loss per epoch (thin: train, thick: validation)",
            "Cross-entropy loss",
            self.0,
            &|r| r.val_loss,
            Some(&|r: &HistoryRow| Some(r.train_loss)),
        )
    }
}

/// Draws the comparison of `runs` into `out_dir/runs.{png,svg}` (each format asked for), each
/// written atomically; returns the paths.
pub fn render(runs: &[RunCurves], out_dir: &Path, formats: &[ImageFormat]) -> Result<Vec<PathBuf>> {
    if runs.is_empty() {
        bail!("no runs to compare");
    }
    crate::register_font()?;
    let mut written = Vec::new();
    for &format in formats {
        let path = out_dir.join(format!("{STEM}.{}", format.extension()));
        super::save(&Comparison(runs), (1600, 640), format, &path)?;
        written.push(path);
    }
    Ok(written)
}
