//! Correctly spaced text for bitmap figures.

use ab_glyph::{Font as _, FontRef, ScaleFont as _};
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

use crate::font::font_ref;

/// A bitmap backend whose text is drawn by [`rasterise`]: plotters 0.3.7's ab_glyph renderer
/// drops each glyph's side bearing and sub-pixel offset, which spaces digits unevenly
/// ("25 0"). Everything else goes straight to the wrapped backend.
pub(crate) struct CrispText<B>(pub B);

type DrawResult<E> = std::result::Result<(), DrawingErrorKind<E>>;

impl<B: DrawingBackend> DrawingBackend for CrispText<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> DrawResult<B::ErrorType> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> DrawResult<B::ErrorType> {
        self.0.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> DrawResult<B::ErrorType> {
        self.0.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> DrawResult<B::ErrorType> {
        self.0.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        ul: BackendCoord,
        br: BackendCoord,
        style: &S,
        fill: bool,
    ) -> DrawResult<B::ErrorType> {
        self.0.draw_rect(ul, br, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> DrawResult<B::ErrorType> {
        self.0.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> DrawResult<B::ErrorType> {
        self.0.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> DrawResult<B::ErrorType> {
        self.0.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> DrawResult<B::ErrorType> {
        self.0.blit_bitmap(pos, size, src)
    }

    /// Same anchoring and rotation as plotters' default `draw_text`, with our rasteriser.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> DrawResult<B::ErrorType> {
        let (Some(font), color) = (font_ref(), style.color()) else {
            return self.0.draw_text(text, style, pos);
        };
        if color.alpha == 0.0 {
            return Ok(());
        }
        let ((min_x, min_y), (max_x, max_y)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let mut result = Ok(());
        rasterise(font, style.size() as f32, text, |x, y, coverage| {
            let (x, y) = transform.transform(x + dx - min_x, y + dy - min_y);
            if result.is_ok() {
                let alpha = color.alpha * f64::from(coverage);
                result = self
                    .0
                    .draw_pixel((pos.0 + x, pos.1 + y), BackendColor { alpha, ..color });
            }
        });
        result
    }
}

/// Calls `put(x, y, coverage)` for the pixels of `text` set in `font` at plotters' `size`,
/// relative to the top left of plotters' layout box (`size / 1.24` tall), with capitals
/// centred vertically in that box.
fn rasterise(font: &FontRef<'static>, size: f32, text: &str, mut put: impl FnMut(i32, i32, f32)) {
    let scaled = font.as_scaled(size);
    let cap_height = scaled
        .outline_glyph(scaled.scaled_glyph('H'))
        .map_or(0.7 * size, |g| -g.px_bounds().min.y);
    let baseline = 0.5 * (size / 1.24 + cap_height);
    let (mut x, mut previous) = (0.0, None);
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            x += scaled.kern(previous, id);
        }
        if let Some(glyph) =
            scaled.outline_glyph(id.with_scale_and_position(size, ab_glyph::point(x, baseline)))
        {
            let bounds = glyph.px_bounds();
            let (left, top) = (bounds.min.x as i32, bounds.min.y as i32);
            glyph.draw(|gx, gy, coverage| put(left + gx as i32, top + gy as i32, coverage));
        }
        x += scaled.h_advance(id);
        previous = Some(id);
    }
}
