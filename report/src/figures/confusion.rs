//! The confusion matrix as a heat map of counts, each with its share of its true class.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::font::FAMILY;
use crate::style::{axes, centred, chart, whole, AXIS_SIZE, TICK_SIZE};

pub(super) fn draw<DB: DrawingBackend>(
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
    // A wider label area keeps "True label" clear of the row names.
    let mut chart = chart(root, title)
        .y_label_area_size(120)
        .build_cartesian_2d(-0.5..1.5, -0.5..1.5)?;
    axes(&mut chart)
        .disable_mesh()
        .x_labels(3)
        .y_labels(3)
        .x_label_formatter(&|&v| whole(v, |v| class(v).to_string()))
        .y_label_formatter(&|&v| whole(v, |v| class(1.0 - v).to_string()))
        .x_desc("Predicted label")
        .y_desc("True label")
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
            let share = 100.0 * count as f64 / row_total;
            chart.draw_series([EmptyElement::at((x, y))
                + Text::new(count.to_string(), (0, -14), centred(34).color(&ink))
                + Text::new(
                    format!("{share:.1}% of true {}", class(t as f64)),
                    (0, 22),
                    centred(TICK_SIZE).color(&ink),
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
