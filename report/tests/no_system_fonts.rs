//! Its own test binary: the font is registered once per process. With an empty font path
//! environment (no font named, font lookups pointed at an empty folder) the report renders with
//! the embedded font: plotters' text backend never looks for system fonts, only at the font we
//! register.

use std::fs;
use std::path::Path;

use report::{render, FontSource, ImageFormat, ReportInputs};

/// Rows of `path` (a PNG) from `top` to `bottom` holding dark pixels.
fn dark_rows(path: &Path, top: usize, bottom: usize) -> usize {
    let decoder = png::Decoder::new(fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let row_len = info.line_size;
    let samples = info.color_type.samples();
    (top..bottom)
        .filter(|&y| {
            buf[y * row_len..(y + 1) * row_len]
                .chunks(samples)
                .any(|px| px.iter().take(3).all(|&c| c < 100))
        })
        .count()
}

#[test]
fn renders_with_the_embedded_font_and_no_system_fonts() {
    let no_fonts = tempfile::tempdir().unwrap();
    std::env::set_var(report::FONT_ENV, "");
    for var in [
        "FONTCONFIG_PATH",
        "FONTCONFIG_FILE",
        "XDG_DATA_DIRS",
        "XDG_DATA_HOME",
    ] {
        std::env::set_var(var, no_fonts.path());
    }
    assert_eq!(report::register_font().unwrap(), FontSource::Embedded);

    let labels: Vec<u32> = (0..200).map(|i| i % 2).collect();
    let probs: Vec<f64> = (0..200)
        .map(|i| if i % 2 == 1 { 0.9 } else { 0.1 } + f64::from(i % 7) * 0.01)
        .collect();
    let inputs = ReportInputs {
        history: vec![],
        metrics: metrics::evaluate(&labels, &probs, 0.5).unwrap(),
        labels,
        prob_positive: probs,
        tables: vec![],
        config_yaml: "seed: 1\n".into(),
        examples: vec![],
        formats: vec![ImageFormat::Png, ImageFormat::Svg],
    };
    let out = tempfile::tempdir().unwrap();
    let written = render(&inputs, out.path()).unwrap();
    assert_eq!(written.len(), 5 * 2 + 2);

    // The titles are text: drawn, so the band they sit in is not blank (the loss figure has no
    // history and shows only its title and a note).
    for stem in ["loss", "roc_curve", "confusion_matrix"] {
        let rows = dark_rows(&out.path().join(format!("{stem}.png")), 0, 60);
        assert!(rows >= 10, "{stem}.png: no title text ({rows} dark rows)");
    }
    let svg = fs::read_to_string(out.path().join("roc_curve.svg")).unwrap();
    assert!(
        svg.contains("ROC curve (test split)"),
        "no title in the SVG"
    );
    let html = fs::read_to_string(out.path().join("report.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 5);
}
