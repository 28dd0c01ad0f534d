//! Renders a synthetic report and checks what lands on disk.
//! Set REPORT_TEST_OUT=/some/dir to keep the full report for a look.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use report::{render, HistoryRow, ImageFormat, ReportInputs, RowKind};

/// Deterministic pseudo-random numbers in [0, 1) (an LCG is plenty for test data).
fn uniform(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

fn history(epochs: u32, steps_per_epoch: u64) -> Vec<HistoryRow> {
    let mut rng = 7;
    let mut rows = Vec::new();
    for epoch in 1..=epochs {
        let mut sum = 0.0;
        for i in 1..=steps_per_epoch {
            let step = u64::from(epoch - 1) * steps_per_epoch + i;
            let loss =
                0.25 + 0.45 * (-(step as f64) / 150.0).exp() + 0.15 * (uniform(&mut rng) - 0.5);
            sum += loss;
            rows.push(HistoryRow {
                kind: RowKind::Step,
                epoch,
                step,
                train_loss: loss,
                learning_rate: Some(2e-4 * (1.0 - step as f64 / 600.0)),
                samples_per_s: Some(180.0),
                val_loss: None,
                val_accuracy: None,
            });
        }
        rows.push(HistoryRow {
            kind: RowKind::Epoch,
            epoch,
            step: u64::from(epoch) * steps_per_epoch,
            train_loss: sum / steps_per_epoch as f64,
            learning_rate: None,
            samples_per_s: Some(175.0),
            val_loss: Some(0.36 - 0.03 * f64::from(epoch)),
            val_accuracy: Some(0.84 + 0.025 * f64::from(epoch)),
        });
    }
    rows
}

/// `n` test predictions: positives skew towards 1, negatives towards 0.
fn predictions(n: usize) -> (Vec<u32>, Vec<f64>) {
    let mut rng = 42;
    (0..n)
        .map(|i| {
            let label = (i % 2) as u32;
            let u = uniform(&mut rng).powf(2.5);
            let p = if label == 1 { 1.0 - u } else { u };
            (label, (p * 1000.0).round() / 1000.0)
        })
        .unzip()
}

fn inputs(labels: Vec<u32>, prob_positive: Vec<f64>, formats: Vec<ImageFormat>) -> ReportInputs {
    let metrics = metrics::evaluate(&labels, &prob_positive, 0.5).unwrap();
    let long = "An <i>astonishing</i> film | with a pipe. ".repeat(40);
    ReportInputs {
        history: history(3, 200),
        metrics,
        labels,
        prob_positive,
        tables: vec![
            (
                "Run".into(),
                vec![
                    (
                        "Base model".into(),
                        "sentence-transformers/all-MiniLM-L6-v2".into(),
                    ),
                    ("Seed".into(), "1234".into()),
                ],
            ),
            (
                "Data".into(),
                vec![
                    ("train".into(), "22500".into()),
                    ("validation".into(), "2500".into()),
                ],
            ),
            (
                "Trainable parameters".into(),
                vec![("LoRA".into(), "73,728 (0.32%)".into())],
            ),
        ],
        config_yaml:
            "model:\n  name: all-MiniLM-L6-v2\n  url: https://huggingface.co/x\nlora:\n  r: 8\n"
                .into(),
        examples: vec![
            (
                "One of the best films I have seen.<br /><br />Go & see it!".into(),
                "Positive".into(),
                0.97,
            ),
            ("Dull, <b>dull</b>, dull.".into(), "Negative".into(), 0.03),
            (long, "Positive".into(), 0.61),
        ],
        formats,
    }
}

fn out_dir(name: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("REPORT_TEST_OUT") {
        Some(dir) => (None, PathBuf::from(dir).join(name)),
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

/// Decodes the whole PNG; returns its size and whether it has more than background pixels.
fn check_png(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(fs::File::open(path).unwrap());
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let pixels = &buf[..info.buffer_size()];
    let ink = pixels
        .chunks(info.color_type.samples())
        .filter(|px| px.iter().any(|&c| c < 128))
        .count();
    assert!(
        ink > 1000,
        "{} looks blank ({ink} dark pixels)",
        path.display()
    );
    (info.width, info.height)
}

/// Parses the whole SVG as XML; the root element must be <svg>.
fn check_svg(path: &Path) {
    let text = fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut root = None;
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)
                if root.is_none() =>
            {
                root = Some(String::from_utf8(e.name().as_ref().to_vec()).unwrap());
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"), "{}", path.display());
    assert!(text.contains("<text"), "{} has no text", path.display());
}

/// Values of every `src` and `href` attribute.
fn links(html: &str) -> Vec<&str> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| {
            html.match_indices(attr)
                .map(move |(i, _)| &html[i + attr.len()..])
        })
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect()
}

const STEMS: [&str; 5] = [
    "loss",
    "val_accuracy",
    "roc_curve",
    "confusion_matrix",
    "probability_histogram",
];

#[test]
fn renders_every_figure_and_a_self_contained_report() {
    let (labels, probs) = predictions(2000);
    let inputs = inputs(labels, probs, vec![ImageFormat::Png, ImageFormat::Svg]);
    let (_tmp, dir) = out_dir("full");
    let written = render(&inputs, &dir).unwrap();
    assert_eq!(written.len(), 5 * 2 + 2);

    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    for stem in STEMS {
        let png = dir.join(format!("{stem}.png"));
        let svg = dir.join(format!("{stem}.svg"));
        assert!(
            written.contains(&png) && written.contains(&svg),
            "{stem} not reported"
        );
        let (w, h) = check_png(&png);
        assert!(w >= 600 && h >= 500, "{stem}.png is {w}x{h}");
        check_svg(&svg);
        // The HTML embeds the PNG itself.
        let data = base64::engine::general_purpose::STANDARD.encode(fs::read(&png).unwrap());
        assert!(
            html.contains(&format!("src=\"data:image/png;base64,{data}\"")),
            "{stem} not embedded"
        );
    }

    // Nothing is fetched: every src/href is a data URI or an in-page anchor.
    for link in links(&html) {
        assert!(
            link.starts_with("data:") || link.starts_with('#'),
            "external link {link:?}"
        );
    }
    assert!(!html.contains("<script") && !html.contains("<link"));
    // User text is escaped (IMDb's literal <br /> becomes a line break).
    assert!(html.contains("Dull, &lt;b&gt;dull&lt;/b&gt;, dull."));
    assert!(html.contains("I have seen.\n\nGo &amp; see it!"));
    assert!(!html.contains("<br />") && !html.contains("<b>"));
    // The classification report, ROC-AUC and config are all there.
    let m = &inputs.metrics;
    assert!(html.contains(&format!("<pre>{}</pre>", m.classification_report_text)));
    assert!(html.contains(&format!("{:.4}", m.roc_auc.unwrap())));
    assert!(html.contains("  url: https://huggingface.co/x"));

    let md = fs::read_to_string(dir.join("report.md")).unwrap();
    for stem in STEMS {
        assert!(
            md.contains(&format!("]({stem}.png)")),
            "{stem}.png not linked"
        );
        assert!(
            md.contains(&format!("]({stem}.svg)")),
            "{stem}.svg not linked"
        );
    }
    assert!(md.contains(inputs.metrics.classification_report_text.trim_end()));
    assert!(md.contains("| Seed | 1234 |"));
    assert!(
        md.contains("with a pipe. An") && md.contains("\\|"),
        "table cells escape |"
    );
    assert!(md.contains("```yaml\nmodel:"));

    // Only the final files are left: no temporaries.
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.iter().all(|n| !n.starts_with(".tmp.")), "{names:?}");
    assert_eq!(names.len(), written.len());
}

#[test]
fn svg_only_report_embeds_svg() {
    let (labels, probs) = predictions(300);
    let inputs = inputs(labels, probs, vec![ImageFormat::Svg]);
    let (_tmp, dir) = out_dir("svg-only");
    let written = render(&inputs, &dir).unwrap();
    assert_eq!(written.len(), 5 + 2);
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/svg+xml;base64,").count(), 5);
    assert!(!dir.join("loss.png").exists());
}

#[test]
fn degenerate_inputs_still_render() {
    // One class only (no ROC), no history, no examples, no tables.
    let labels = vec![1; 50];
    let probs: Vec<f64> = (0..50).map(|i| f64::from(i) / 49.0).collect();
    let mut inputs = inputs(labels, probs, vec![ImageFormat::Png]);
    inputs.history.clear();
    inputs.examples.clear();
    inputs.tables.clear();
    assert_eq!(inputs.metrics.roc_auc, None);
    let (_tmp, dir) = out_dir("degenerate");
    render(&inputs, &dir).unwrap();
    for stem in STEMS {
        check_png(&dir.join(format!("{stem}.png")));
    }
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("n/a"));
}

#[test]
fn bad_inputs_are_errors() {
    let (labels, probs) = predictions(10);
    let mut no_format = inputs(labels.clone(), probs.clone(), vec![]);
    let dir = tempfile::tempdir().unwrap();
    assert!(render(&no_format, dir.path()).is_err());
    no_format.formats = vec![ImageFormat::Png];
    no_format.prob_positive.pop();
    let err = render(&no_format, dir.path()).unwrap_err().to_string();
    assert!(err.contains("10 labels but 9 probabilities"), "{err}");
}
