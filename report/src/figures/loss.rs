//! Training loss per step and per epoch, and validation loss per epoch, against the step.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::style::{
    axes, chart, extent, finite, legend, line_with_dots, no_data, BLUE, GREEN, ORANGE,
};
use crate::{HistoryRow, RowKind};

pub(super) fn draw<DB: DrawingBackend>(
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
    axes(&mut chart)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("Optimizer step")
        .y_desc("Cross-entropy loss")
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
            .legend(move |at| line_with_dots(color, at));
        chart.draw_series(markers)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}
