//! Its own test binary: the font is registered once per process, so the failure must be
//! provoked before any other render.

#[test]
fn missing_font_names_the_path_tried() {
    std::env::set_var(report::FONT_ENV, "/nonexistent/NoSuchFont.ttf");
    let err = report::register_font().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/NoSuchFont.ttf"), "{err}");
    assert!(err.contains(report::FONT_ENV), "{err}");
}
