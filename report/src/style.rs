//! What every figure shares: colours, text sizes, the chart frame, axes, legends, the
//! placeholder drawn when there is no data, and the filtering of what can be plotted.

use anyhow::Result;
use plotters::chart::MeshStyle;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::BackendCoord;

use crate::font::FAMILY;

// Tableau colours, as matplotlib uses them.
pub(crate) const BLUE: RGBColor = RGBColor(31, 119, 180);
pub(crate) const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub(crate) const GREEN: RGBColor = RGBColor(44, 160, 44);
pub(crate) const RED: RGBColor = RGBColor(214, 39, 40);
pub(crate) const GREY: RGBColor = RGBColor(127, 127, 127);
const GRID: RGBColor = RGBColor(230, 230, 230);

const TITLE_SIZE: u32 = 26;
pub(crate) const AXIS_SIZE: u32 = 20;
pub(crate) const TICK_SIZE: u32 = 16;
const LEGEND_SIZE: u32 = 17;

/// A chart on f64 axes, as every figure draws.
pub(crate) type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart builder with the shared caption, margins and room for axis labels.
pub(crate) fn chart<'a, 'b, DB: DrawingBackend>(
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

/// The axes: light grid, axis descriptions and tick labels in the shared sizes; the caller
/// adds descriptions and label formats, and draws.
pub(crate) fn axes<'a, 'b, DB: DrawingBackend>(
    chart: &'b mut Chart<'a, DB>,
) -> MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB> {
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .axis_desc_style((FAMILY, AXIS_SIZE))
        .label_style((FAMILY, TICK_SIZE));
    mesh
}

/// Draws the series labels in a framed box.
pub(crate) fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
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

/// The legend mark at `at` of a thick line with dots on its points.
pub(crate) fn line_with_dots<DB: DrawingBackend>(
    color: RGBColor,
    at: BackendCoord,
) -> ComposedElement<BackendCoord, DB, PathElement<BackendCoord>, Circle<BackendCoord, i32>> {
    EmptyElement::at(at)
        + PathElement::new([(0, 0), (24, 0)], color.stroke_width(3))
        + Circle::new((12, 0), 5, color.filled())
}

/// Text of `size` centred on its position.
pub(crate) fn centred<'a>(size: u32) -> TextStyle<'a> {
    TextStyle::from((FAMILY, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
}

/// Text of `size` whose bottom centre is its position (labels above points).
pub(crate) fn above<'a>(size: u32) -> TextStyle<'a> {
    TextStyle::from((FAMILY, size).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom))
}

/// Draws the title and a note in place of a chart when there is nothing to plot.
pub(crate) fn no_data<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    note: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(title, (w as i32 / 2, 40), centred(TITLE_SIZE)))?;
    root.draw(&Text::new(
        note,
        (w as i32 / 2, h as i32 / 2),
        centred(AXIS_SIZE).color(&GREY),
    ))?;
    Ok(())
}

/// Smallest and largest finite value.
pub(crate) fn extent(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// The points with both coordinates finite.
pub(crate) fn finite(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    points
        .into_iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// A tick label on whole values only, blank between them.
pub(crate) fn whole(v: f64, label: impl Fn(f64) -> String) -> String {
    if (v - v.round()).abs() < 1e-6 {
        label(v)
    } else {
        String::new()
    }
}
