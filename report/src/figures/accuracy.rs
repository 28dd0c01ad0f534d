//! Validation accuracy at the end of each epoch, each point labelled with its value.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::style::{
    above, axes, chart, extent, finite, legend, line_with_dots, no_data, whole, GREEN, TICK_SIZE,
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
    axes(&mut chart)
        .x_labels(((e_hi - e_lo) as usize + 2).min(12))
        .x_label_formatter(&|&x| whole(x, |x| format!("{x:.0}")))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .x_desc("Epoch")
        .y_desc("Validation accuracy")
        .draw()?;
    chart
        .draw_series(LineSeries::new(points.clone(), GREEN.stroke_width(3)))?
        .label("validation accuracy")
        .legend(|at| line_with_dots(GREEN, at));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 6, GREEN.filled())))?;
    chart.draw_series(points.iter().map(|&(e, a)| {
        EmptyElement::at((e, a)) + Text::new(format!("{a:.4}"), (0, -12), above(TICK_SIZE))
    }))?;
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}
