//! Histograms of the predicted P(positive), one per true class, with the decision threshold.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::style::{axes, chart, legend, no_data, BLUE, RED};
use crate::ReportInputs;

pub(super) fn draw<DB: DrawingBackend>(
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
    axes(&mut chart)
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
