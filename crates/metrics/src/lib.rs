//! Binary-classification metrics, defined exactly as scikit-learn 1.9 defines them.
//!
//! Labels are `0` (negative) and `1` (positive); scores are the probability of the positive class.
//! [`evaluate`] computes everything at once into a [`Metrics`], which is what
//! `artifacts/evaluate/metrics.json` holds.
//!
//! JSON has no infinity, so non-finite thresholds serialise as the strings `"inf"`, `"-inf"` and
//! `"nan"` (the first ROC threshold is always `"inf"`); deserialisation accepts those strings or
//! numbers. This is also how the scikit-learn fixtures store them.

use serde::{Deserialize, Serialize};

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("no samples: metrics need at least one")]
    Empty,
    #[error("length mismatch: {labels} labels but {other} predictions/scores")]
    LengthMismatch { labels: usize, other: usize },
    #[error("label {value} at index {index} is not 0 or 1")]
    InvalidLabel { index: usize, value: u32 },
    #[error("score at index {index} is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error("threshold must not be NaN")]
    NanThreshold,
    /// Like scikit-learn's `UndefinedMetricWarning`: ROC needs both classes in `y_true`.
    #[error(
        "only one class ({0}) is present in the labels: the ROC curve and its AUC are undefined"
    )]
    SingleClass(u32),
}

pub type Result<T> = std::result::Result<T, MetricsError>;

/// Binary confusion matrix; sklearn's `confusion_matrix` is `[[tn, fp], [fn, tp]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tp: u64,
}

impl ConfusionMatrix {
    /// Rows are true classes, columns predicted classes, as sklearn lays it out.
    pub fn as_matrix(&self) -> [[u64; 2]; 2] {
        [[self.tn, self.fp], [self.fn_, self.tp]]
    }

    pub fn total(&self) -> u64 {
        self.tn + self.fp + self.fn_ + self.tp
    }
}

/// One row of a classification report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    #[serde(rename = "f1-score")]
    pub f1_score: f64,
    pub support: u64,
}

/// sklearn's `classification_report(..., output_dict=True)` for labels `[0, 1]` named
/// `negative`/`positive`, with `zero_division=0`; serialises to the same keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    pub negative: ClassScores,
    pub positive: ClassScores,
    pub accuracy: f64,
    #[serde(rename = "macro avg")]
    pub macro_avg: ClassScores,
    #[serde(rename = "weighted avg")]
    pub weighted_avg: ClassScores,
}

/// ROC curve as sklearn's `roc_curve(drop_intermediate=True)` returns it: `fpr` and `tpr`
/// increasing, `thresholds` decreasing, `thresholds[0] == +inf` (serialised as `"inf"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    #[serde(with = "nonfinite_f64_vec")]
    pub thresholds: Vec<f64>,
}

/// Everything [`evaluate`] computes: the content of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n_samples: usize,
    /// A sample is predicted positive when `prob_positive >= threshold`.
    pub threshold: f64,
    pub accuracy: f64,
    pub confusion_matrix: ConfusionMatrix,
    pub classification_report: ClassificationReport,
    /// [`ClassificationReport::to_text`] with target names `negative`/`positive` and 4 digits.
    pub classification_report_text: String,
    /// `None` when only one class is present (sklearn warns and returns NaN).
    pub roc_auc: Option<f64>,
    /// `None` when only one class is present.
    pub roc_curve: Option<RocCurve>,
}

/// Checks that `labels` is non-empty, binary and as long as `other`.
fn check_labels(labels: &[u32], other: usize) -> Result<()> {
    if labels.len() != other {
        return Err(MetricsError::LengthMismatch {
            labels: labels.len(),
            other,
        });
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty);
    }
    match labels.iter().position(|&l| l > 1) {
        Some(index) => Err(MetricsError::InvalidLabel {
            index,
            value: labels[index],
        }),
        None => Ok(()),
    }
}

fn check_scores(labels: &[u32], scores: &[f64]) -> Result<()> {
    check_labels(labels, scores.len())?;
    match scores.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(MetricsError::NonFinite {
            index,
            value: scores[index],
        }),
        None => Ok(()),
    }
}

/// Hard predictions: `1` where `prob_positive >= threshold`.
pub fn predict(prob_positive: &[f64], threshold: f64) -> Vec<u32> {
    prob_positive
        .iter()
        .map(|&p| u32::from(p >= threshold))
        .collect()
}

pub fn confusion_matrix(labels: &[u32], predictions: &[u32]) -> Result<ConfusionMatrix> {
    check_labels(labels, predictions.len())?;
    check_labels(predictions, labels.len())?;
    let mut cm = ConfusionMatrix {
        tn: 0,
        fp: 0,
        fn_: 0,
        tp: 0,
    };
    for (&y, &p) in labels.iter().zip(predictions) {
        *match (y, p) {
            (0, 0) => &mut cm.tn,
            (0, _) => &mut cm.fp,
            (_, 0) => &mut cm.fn_,
            _ => &mut cm.tp,
        } += 1;
    }
    Ok(cm)
}

pub fn accuracy(labels: &[u32], predictions: &[u32]) -> Result<f64> {
    let cm = confusion_matrix(labels, predictions)?;
    Ok((cm.tn + cm.tp) as f64 / cm.total() as f64)
}

/// `num / den`, or 0 when `den == 0` (sklearn's `zero_division=0`).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Scores of the class whose true positives are `tp`; sklearn computes F1 from counts,
/// `2tp / (2tp + fp + fn)`, rather than from precision and recall.
fn class_scores(tp: u64, fp: u64, fn_: u64) -> ClassScores {
    ClassScores {
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        f1_score: ratio(2 * tp, 2 * tp + fp + fn_),
        support: tp + fn_,
    }
}

/// sklearn's `classification_report` for labels `[0, 1]`, `zero_division=0`.
pub fn classification_report(labels: &[u32], predictions: &[u32]) -> Result<ClassificationReport> {
    let cm = confusion_matrix(labels, predictions)?;
    let negative = class_scores(cm.tn, cm.fn_, cm.fp);
    let positive = class_scores(cm.tp, cm.fp, cm.fn_);
    let support = negative.support + positive.support;
    let macro_of = |f: fn(&ClassScores) -> f64| (f(&negative) + f(&positive)) / 2.0;
    // np.average(x, weights=support): sum(x * w) / sum(w); all-zero weights cannot happen here.
    let weighted_of = |f: fn(&ClassScores) -> f64| {
        (f(&negative) * negative.support as f64 + f(&positive) * positive.support as f64)
            / support as f64
    };
    let average = |avg: &dyn Fn(fn(&ClassScores) -> f64) -> f64| ClassScores {
        precision: avg(|c| c.precision),
        recall: avg(|c| c.recall),
        f1_score: avg(|c| c.f1_score),
        support,
    };
    Ok(ClassificationReport {
        negative,
        positive,
        accuracy: (cm.tn + cm.tp) as f64 / support as f64,
        macro_avg: average(&macro_of),
        weighted_avg: average(&weighted_of),
    })
}

impl ClassificationReport {
    /// The text of sklearn's `classification_report(..., target_names=names, digits=digits)`,
    /// character for character (including the trailing newline).
    pub fn to_text(&self, target_names: [&str; 2], digits: usize) -> String {
        let heading = "weighted avg";
        let width = target_names
            .iter()
            .map(|n| n.chars().count())
            .chain([heading.len(), digits]);
        let w = width.max().unwrap_or(0);
        let row = |name: &str, c: &ClassScores| {
            format!(
                "{name:>w$}  {:>9.digits$} {:>9.digits$} {:>9.digits$} {:>9}\n",
                c.precision, c.recall, c.f1_score, c.support
            )
        };
        let mut s = format!(
            "{:>w$}  {:>9} {:>9} {:>9} {:>9}\n\n",
            "", "precision", "recall", "f1-score", "support"
        );
        s += &row(target_names[0], &self.negative);
        s += &row(target_names[1], &self.positive);
        s += "\n";
        s += &format!(
            "{:>w$}  {:>9} {:>9} {:>9.digits$} {:>9}\n",
            "accuracy", "", "", self.accuracy, self.macro_avg.support
        );
        s += &row("macro avg", &self.macro_avg);
        s += &row(heading, &self.weighted_avg);
        s
    }
}

/// ROC curve as sklearn's `roc_curve(y, score)` with `drop_intermediate=True`.
///
/// Samples with equal scores form one threshold (one point), so ties move the curve diagonally.
pub fn roc_curve(labels: &[u32], scores: &[f64]) -> Result<RocCurve> {
    check_scores(labels, scores)?;
    let positives = labels.iter().filter(|&&l| l == 1).count();
    if positives == 0 || positives == labels.len() {
        return Err(MetricsError::SingleClass(labels[0]));
    }

    // Cumulative (fps, tps, threshold) at the last sample of every group of equal scores,
    // walking from the highest score down (sklearn's `confusion_matrix_at_thresholds`).
    // A stable sort keeps tied samples (0.0 and -0.0 included) in input order, as numpy's
    // stable argsort does, so each group's threshold is the same value sklearn reports.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .expect("scores are finite")
    });
    let (mut fps, mut tps, mut thresholds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fp, mut tp) = (0i64, 0i64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1;
        } else {
            fp += 1;
        }
        if order
            .get(k + 1)
            .is_none_or(|&next| scores[next] != scores[i])
        {
            fps.push(fp);
            tps.push(tp);
            thresholds.push(scores[i]);
        }
    }

    // drop_intermediate: keep the ends and every point where the curve bends, i.e. where the
    // second difference of fps or tps is non-zero; collinear points change nothing.
    let n = fps.len();
    let bends = |v: &[i64], i: usize| v[i + 1] - 2 * v[i] + v[i - 1] != 0;
    let keep: Vec<usize> = (0..n)
        .filter(|&i| n <= 2 || i == 0 || i == n - 1 || bends(&fps, i) || bends(&tps, i))
        .collect();

    // An extra point at threshold +inf so the curve starts at (0, 0).
    let (fp_total, tp_total) = (fp as f64, tp as f64);
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    for i in keep {
        curve.fpr.push(fps[i] as f64 / fp_total);
        curve.tpr.push(tps[i] as f64 / tp_total);
        curve.thresholds.push(thresholds[i]);
    }
    Ok(curve)
}

/// Area under the ROC curve by the trapezoidal rule, as sklearn's `roc_auc_score`.
/// Errors with [`MetricsError::SingleClass`] where sklearn warns and returns NaN.
pub fn roc_auc_score(labels: &[u32], scores: &[f64]) -> Result<f64> {
    Ok(roc_curve(labels, scores)?.auc())
}

impl RocCurve {
    /// Trapezoidal area under `tpr(fpr)`.
    pub fn auc(&self) -> f64 {
        let (x, y) = (&self.fpr, &self.tpr);
        (1..x.len())
            .map(|i| (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0)
            .sum()
    }
}

/// All metrics of a test split: predictions are `prob_positive >= threshold`. ROC is `None`
/// when the labels hold one class only; every other error (empty input, mismatched lengths,
/// labels other than 0/1, non-finite scores, NaN threshold) is returned.
pub fn evaluate(labels: &[u32], prob_positive: &[f64], threshold: f64) -> Result<Metrics> {
    if threshold.is_nan() {
        return Err(MetricsError::NanThreshold);
    }
    check_scores(labels, prob_positive)?;
    let predictions = predict(prob_positive, threshold);
    let report = classification_report(labels, &predictions)?;
    let roc_curve = match roc_curve(labels, prob_positive) {
        Ok(curve) => Some(curve),
        Err(MetricsError::SingleClass(_)) => None,
        Err(e) => return Err(e),
    };
    Ok(Metrics {
        n_samples: labels.len(),
        threshold,
        accuracy: report.accuracy,
        confusion_matrix: confusion_matrix(labels, &predictions)?,
        classification_report_text: report.to_text(["negative", "positive"], 4),
        classification_report: report,
        roc_auc: roc_curve.as_ref().map(RocCurve::auc),
        roc_curve,
    })
}

/// Serde helpers for `Vec<f64>` that may hold infinities or NaN: those become the strings
/// `"inf"`, `"-inf"` and `"nan"`, since JSON numbers cannot express them.
pub mod nonfinite_f64_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(f64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let text = |v: &f64| match *v {
            f64::INFINITY => Value::Text("inf".into()),
            f64::NEG_INFINITY => Value::Text("-inf".into()),
            v if v.is_nan() => Value::Text("nan".into()),
            v => Value::Number(v),
        };
        s.collect_seq(values.iter().map(text))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Value>::deserialize(d)?
            .into_iter()
            .map(|v| match v {
                Value::Number(x) => Ok(x),
                Value::Text(t) => match t.to_ascii_lowercase().as_str() {
                    "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
                    "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                    "nan" => Ok(f64::NAN),
                    _ => Err(serde::de::Error::custom(format!("not a number: {t:?}"))),
                },
            })
            .collect()
    }
}
