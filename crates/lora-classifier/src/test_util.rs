//! Helpers of the crate's unit tests.

use candle_core::{DType, Tensor};

/// max |a − b| over all elements, compared in f32; shapes must be equal and every value finite
/// (`test_support::compare`: a NaN fails instead of comparing as equal).
#[track_caller]
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let values = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    test_support::compare::max_abs_diff(&values(a), &values(b), "max_diff") as f32
}
