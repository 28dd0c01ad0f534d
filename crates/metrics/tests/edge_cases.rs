//! Degenerate inputs: where sklearn warns, raises or divides by zero.

use metrics::*;

#[test]
fn empty_input_is_an_error() {
    assert_eq!(evaluate(&[], &[], 0.5), Err(MetricsError::Empty));
    assert_eq!(accuracy(&[], &[]), Err(MetricsError::Empty));
    assert_eq!(roc_auc_score(&[], &[]), Err(MetricsError::Empty));
}

#[test]
fn bad_inputs_are_errors() {
    assert!(matches!(
        evaluate(&[0, 1], &[0.5], 0.5),
        Err(MetricsError::LengthMismatch { .. })
    ));
    assert!(matches!(
        evaluate(&[0, 2], &[0.1, 0.9], 0.5),
        Err(MetricsError::InvalidLabel { index: 1, value: 2 })
    ));
    assert!(matches!(
        evaluate(&[0, 1], &[0.1, f64::NAN], 0.5),
        Err(MetricsError::NonFinite { index: 1, .. })
    ));
    assert_eq!(
        evaluate(&[0, 1], &[0.1, 0.9], f64::NAN),
        Err(MetricsError::NanThreshold)
    );
}

#[test]
fn one_class_leaves_auc_undefined() {
    assert_eq!(
        roc_auc_score(&[1, 1, 1], &[0.2, 0.6, 0.9]),
        Err(MetricsError::SingleClass(1))
    );
    assert_eq!(
        roc_curve(&[0, 0], &[0.2, 0.6]),
        Err(MetricsError::SingleClass(0))
    );
    let m = evaluate(&[1, 1, 1], &[0.2, 0.6, 0.9], 0.5).unwrap();
    assert_eq!(m.roc_auc, None);
    assert_eq!(m.roc_curve, None);
    // The rest is still defined: sklearn with labels=[0, 1] gives these.
    assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-12);
    let r = &m.classification_report;
    assert_eq!(
        (r.negative.precision, r.negative.recall, r.negative.f1_score),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(r.negative.support, 0);
    assert_eq!(r.positive.precision, 1.0);
    assert!((r.positive.recall - 2.0 / 3.0).abs() < 1e-12);
    assert!((r.positive.f1_score - 0.8).abs() < 1e-12);
    assert!((r.macro_avg.f1_score - 0.4).abs() < 1e-12);
    assert!((r.weighted_avg.f1_score - 0.8).abs() < 1e-12);
}

#[test]
fn zero_division_gives_zero() {
    // Nothing predicted positive: positive precision is 0/0.
    let r = classification_report(&[0, 1, 1, 0], &[0, 0, 0, 0]).unwrap();
    assert_eq!(r.positive.precision, 0.0);
    assert_eq!(r.positive.recall, 0.0);
    assert_eq!(r.positive.f1_score, 0.0);
    assert_eq!(r.negative.precision, 0.5);
    assert_eq!(r.negative.recall, 1.0);
    assert!((r.negative.f1_score - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(r.accuracy, 0.5);
    assert!((r.macro_avg.precision - 0.25).abs() < 1e-12);
}

#[test]
fn small_roc_matches_sklearn_docs() {
    // sklearn's roc_curve docstring example (labels 1/2 mapped to 0/1).
    let c = roc_curve(&[0, 0, 1, 1], &[0.1, 0.4, 0.35, 0.8]).unwrap();
    assert_eq!(c.fpr, [0.0, 0.0, 0.5, 0.5, 1.0]);
    assert_eq!(c.tpr, [0.0, 0.5, 0.5, 1.0, 1.0]);
    assert_eq!(c.thresholds, [f64::INFINITY, 0.8, 0.4, 0.35, 0.1]);
    assert_eq!(
        roc_auc_score(&[0, 0, 1, 1], &[0.1, 0.4, 0.35, 0.8]),
        Ok(0.75)
    );
}

#[test]
fn ties_make_one_point_and_collinear_points_drop() {
    // All scores tied: one diagonal step from (0,0) to (1,1), AUC 0.5.
    let c = roc_curve(&[0, 1, 0, 1], &[0.5; 4]).unwrap();
    assert_eq!(c.fpr, [0.0, 1.0]);
    assert_eq!(c.tpr, [0.0, 1.0]);
    assert_eq!(c.thresholds, [f64::INFINITY, 0.5]);
    // Perfect ranking: the points on the vertical and horizontal runs are dropped.
    let c = roc_curve(&[1, 1, 1, 0, 0, 0], &[0.9, 0.8, 0.7, 0.3, 0.2, 0.1]).unwrap();
    assert_eq!(c.fpr, [0.0, 0.0, 0.0, 1.0]);
    assert_eq!(c.tpr, [0.0, 1.0 / 3.0, 1.0, 1.0]);
    assert_eq!(c.thresholds, [f64::INFINITY, 0.9, 0.7, 0.1]);
    assert_eq!(c.auc(), 1.0);
}

#[test]
fn text_report_widens_for_long_names() {
    let r = classification_report(&[0, 1], &[0, 1]).unwrap();
    let text = r.to_text(["a-very-long-class-name", "b"], 2);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[2],
        "a-very-long-class-name       1.00      1.00      1.00         1"
    );
    assert_eq!(
        lines[5],
        "              accuracy                           1.00         2"
    );
}
