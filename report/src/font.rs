//! The figures' font. Plotters has no font of its own: text is measured and drawn with a
//! TrueType font registered at run time. DejaVu Sans is embedded in the binary (`fonts/`), so
//! figures render the same everywhere with no system fonts; [`FONT_ENV`] may name another.

use std::path::PathBuf;
use std::sync::OnceLock;

use ab_glyph::FontRef;
use anyhow::Result;
use plotters::style::FontStyle;

/// Environment variable naming a `.ttf`/`.otf` file to use instead of the embedded font
/// (unset or empty: the embedded one).
pub const FONT_ENV: &str = "REPORT_FONT";

/// DejaVu Sans 2.37 (Bitstream Vera licence; see fonts/README.md).
static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// The family every figure's text uses; the registered font goes by this name.
pub(crate) const FAMILY: &str = "sans-serif";

/// Where the figure font came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FontSource {
    /// DejaVu Sans, built in.
    Embedded,
    /// The file named by [`FONT_ENV`].
    File(PathBuf),
}

/// The registered font, for the bitmap text renderer (`crisp_text`).
static FONT_REF: OnceLock<FontRef<'static>> = OnceLock::new();

pub(crate) fn font_ref() -> Option<&'static FontRef<'static>> {
    FONT_REF.get()
}

/// Registers the figure font with plotters, once per process, and says which it is. If
/// [`FONT_ENV`] names a file, only that file is tried, so a wrong override is not silently
/// ignored.
pub fn register_font() -> Result<FontSource> {
    static FONT: OnceLock<Result<FontSource, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let (source, bytes): (FontSource, &'static [u8]) =
            match std::env::var_os(FONT_ENV).filter(|v| !v.is_empty()) {
                None => (FontSource::Embedded, DEJAVU_SANS),
                Some(path) => {
                    let path = PathBuf::from(path);
                    let bytes = std::fs::read(&path).map_err(|e| {
                        format!(
                            "cannot read the font {} named by {FONT_ENV}: {e}",
                            path.display()
                        )
                    })?;
                    // plotters keeps a `&'static` font; it is loaded once, so leaking it is fine.
                    (FontSource::File(path), Box::leak(bytes.into_boxed_slice()))
                }
            };
        let invalid = || match &source {
            FontSource::File(path) => format!(
                "{} (named by {FONT_ENV}) is not a TrueType/OpenType font",
                path.display()
            ),
            FontSource::Embedded => "the embedded font is not a TrueType font".to_string(),
        };
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| invalid())?;
        let _ = FONT_REF.set(FontRef::try_from_slice(bytes).map_err(|_| invalid())?);
        Ok(source)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}
