//! The one numeric comparison every test uses: lengths must match, there must be something to
//! compare, and a non-finite value on either side fails (a NaN never compares as "close", as it
//! would in a `fold(0.0, f32::max)`). A failure names the worst element.

use std::fmt;

/// A number a test compares: f32 and f64 (widened to f64 to compare).
pub trait Value: Copy {
    fn to_f64(self) -> f64;
}

impl Value for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Value for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// Where two equally long, all-finite lists differ most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diff {
    /// max |got − want|
    pub max_abs: f64,
    /// The element where it is reached, and its two values.
    pub index: usize,
    pub got: f64,
    pub want: f64,
    /// max |want|: the reference's scale, for relative errors.
    pub scale: f64,
}

impl Diff {
    /// max |got − want| / max |want| (a zero reference counts as the smallest positive float).
    pub fn relative(&self) -> f64 {
        self.max_abs / self.scale.max(f64::MIN_POSITIVE)
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max |got − expected| {:e} at element {} (got {}, expected {}; max |expected| {:e})",
            self.max_abs, self.index, self.got, self.want, self.scale
        )
    }
}

/// The largest difference between `got` and `want`, or why they cannot be compared: different
/// lengths, nothing to compare, or a NaN/infinity on either side (named by index).
pub fn diff<G: Value, W: Value>(got: &[G], want: &[W]) -> Result<Diff, String> {
    if got.len() != want.len() {
        return Err(format!(
            "lengths differ: got {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    if got.is_empty() {
        return Err("nothing to compare (both empty)".into());
    }
    let mut worst = Diff {
        max_abs: -1.0,
        index: 0,
        got: 0.0,
        want: 0.0,
        scale: 0.0,
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64(), w.to_f64());
        if !g.is_finite() {
            return Err(format!("got[{i}] = {g} is not finite (expected {w})"));
        }
        if !w.is_finite() {
            return Err(format!("expected[{i}] = {w} is not finite (got {g})"));
        }
        let d = (g - w).abs();
        if d > worst.max_abs {
            worst = Diff {
                max_abs: d,
                index: i,
                got: g,
                want: w,
                scale: worst.scale,
            };
        }
        worst.scale = worst.scale.max(w.abs());
    }
    Ok(worst)
}

/// [`diff`], panicking with `what` when the lists cannot be compared.
#[track_caller]
pub fn diff_of<G: Value, W: Value>(got: &[G], want: &[W], what: &str) -> Diff {
    // A match, not unwrap_or_else: a closure would hide the caller's line from the panic.
    match diff(got, want) {
        Ok(d) => d,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// max |got − want|, panicking with `what` when the lists cannot be compared.
#[track_caller]
pub fn max_abs_diff<G: Value, W: Value>(got: &[G], want: &[W], what: &str) -> f64 {
    diff_of(got, want, what).max_abs
}

/// Asserts max |got − want| ≤ `tol`; returns the comparison.
#[track_caller]
pub fn assert_close<G: Value, W: Value>(got: &[G], want: &[W], tol: f64, what: &str) -> Diff {
    let d = diff_of(got, want, what);
    assert!(d.max_abs <= tol, "{what}: {d} > tolerance {tol:e}");
    d
}

/// Asserts max |got − want| / max |want| ≤ `tol`; returns the comparison.
#[track_caller]
pub fn assert_close_relative<G: Value, W: Value>(
    got: &[G],
    want: &[W],
    tol: f64,
    what: &str,
) -> Diff {
    let d = diff_of(got, want, what);
    assert!(
        d.relative() <= tol,
        "{what}: relative error {:e} > tolerance {tol:e}: {d}",
        d.relative()
    );
    d
}

/// Asserts |got[i] − want[i]| ≤ bound[i] for every element (a tolerance of its own per element,
/// such as a few ulps of each sum's magnitude), after the checks of [`diff`].
#[track_caller]
pub fn assert_within<G: Value, W: Value>(got: &[G], want: &[W], bound: &[f64], what: &str) {
    diff_of(got, want, what);
    assert_eq!(bound.len(), got.len(), "{what}: one bound per element");
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let (g, w) = (g.to_f64(), w.to_f64());
        assert!(
            (g - w).abs() <= b,
            "{what}: element {i}: got {g}, expected {w}, |difference| {:e} > bound {b:e}",
            (g - w).abs()
        );
    }
}

/// The factor `s` that best fits got ≈ s · want (least squares: ⟨got, want⟩ / ⟨want, want⟩),
/// after the checks of [`diff`]. Rounding noise averages out of it, a mis-scaled result does not:
/// a gradient 5% too large gives 1.05 however noisy its elements.
#[track_caller]
pub fn fitted_scale<G: Value, W: Value>(got: &[G], want: &[W], what: &str) -> f64 {
    diff_of(got, want, what);
    let (mut gw, mut ww) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (g.to_f64(), w.to_f64());
        gw += g * w;
        ww += w * w;
    }
    assert!(
        ww > 0.0,
        "{what}: the reference is all zeros: nothing to fit"
    );
    gw / ww
}

/// Asserts that an effect a check must detect (`effect`, such as what the adapter changes) is at
/// least `factor` × the check's tolerance: a tolerance as large as the effect lets its loss pass.
#[track_caller]
pub fn assert_detects(effect: f64, tol: f64, factor: f64, what: &str) {
    assert!(
        effect.is_finite() && effect >= factor * tol,
        "{what}: the effect to detect ({effect:e}) is under {factor} × the tolerance ({tol:e}); \
         the check could not tell it missing"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_worst_element() {
        let d = diff(&[1.0f32, 2.0, 3.0], &[1.0, 2.5, 3.1]).unwrap();
        assert_eq!(d.index, 1);
        assert!((d.max_abs - 0.5).abs() < 1e-12);
        assert!((d.scale - 3.1).abs() < 1e-6);
        assert!((d.relative() - 0.5 / 3.1).abs() < 1e-6);
    }

    #[test]
    fn nan_and_infinity_fail_on_either_side() {
        let e = diff(&[0.0f32, f32::NAN], &[0.0, 0.0]).unwrap_err();
        assert!(e.contains("got[1] = NaN"), "{e}");
        let e = diff(&[0.0f64, 0.0], &[f64::INFINITY, 0.0]).unwrap_err();
        assert!(e.contains("expected[0] = inf"), "{e}");
        // All-NaN against all-NaN: not equal, an error.
        assert!(diff(&[f32::NAN; 3], &[f32::NAN; 3]).is_err());
    }

    #[test]
    fn lengths_must_match_and_not_be_empty() {
        assert!(diff(&[1.0f32], &[1.0, 2.0])
            .unwrap_err()
            .contains("lengths"));
        assert!(diff::<f32, f32>(&[], &[]).unwrap_err().contains("nothing"));
    }

    #[test]
    #[should_panic(expected = "tolerance")]
    fn assert_close_fails_past_the_tolerance() {
        assert_close(&[1.0f32], &[1.1], 0.05, "x");
    }

    #[test]
    fn fitted_scale_sees_a_uniform_factor_through_noise() {
        let want: Vec<f64> = (0..100).map(|i| ((i * 37) % 17) as f64 - 8.0).collect();
        let got: Vec<f64> = want
            .iter()
            .enumerate()
            .map(|(i, w)| 1.05 * w + if i % 2 == 0 { 0.1 } else { -0.1 })
            .collect();
        assert!((fitted_scale(&got, &want, "x") - 1.05).abs() < 1e-2);
    }

    #[test]
    #[should_panic(expected = "element 1")]
    fn assert_within_names_the_element_past_its_bound() {
        assert_within(&[1.0f32, 2.0], &[1.0f64, 2.1], &[0.0, 0.05], "x");
    }

    #[test]
    #[should_panic(expected = "could not tell")]
    fn an_effect_under_the_factor_fails() {
        assert_detects(0.035, 0.01, 5.0, "adapter");
    }
}
