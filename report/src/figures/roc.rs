//! The ROC curve of the test predictions, with the chance diagonal and the operating point of
//! the decision threshold.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::style::{axes, chart, legend, no_data, BLUE, GREY, RED};

pub(super) fn draw<DB: DrawingBackend>(
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
    axes(&mut chart)
        .x_desc("False positive rate")
        .y_desc("True positive rate")
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
