//! Dropout masks from a counter-based hash: reproducible from (seed, site, element index) on
//! any device and thread count, independent of candle's (on the CPU unseedable) RNG. Another
//! device's kernel reproduces the same masks from [`DropKey`]'s fields and [`hash32`]: change
//! nothing here without changing it there.

use rayon::prelude::*;

use super::matrix::{assume_init, uninit_buffer};
use super::simd::{dropout_factors, dropout_into};
use super::CHUNK;
use crate::dropout_mask::DropKey;

/// The mask of `n` elements (0 or 1/(1-p)), for the composed path.
pub(crate) fn dropout_mask(key: DropKey, n: usize) -> Vec<f32> {
    let mut v = uninit_buffer(n);
    v.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, c)| dropout_factors(c, i * CHUNK, key));
    // SAFETY: the chunks cover the buffer and `dropout_factors` writes each whole.
    unsafe { assume_init(v) }
}

/// dropout(x) into a new buffer; the gradient's backward pass is the same call.
pub(crate) fn dropout(x: &[f32], key: DropKey) -> Vec<f32> {
    let mut y = uninit_buffer(x.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(i, (y, x))| dropout_into(x, y, i * CHUNK, key));
    // SAFETY: the chunks cover the buffer and `dropout_into` writes each whole.
    unsafe { assume_init(y) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropout_mask::{hash32, layer_site};

    #[test]
    fn keys_and_masks_never_change() {
        // The CUDA kernel and saved training runs depend on these bits: values computed
        // independently (Python) from the definitions in `dropout_mask`.
        let key = DropKey::new(0.1, 42, layer_site(3, 1));
        assert_eq!(
            (key.k0, key.k1, key.threshold, key.scale),
            (0x42fb_d768, 0xc736_fbd2, 429_496_730, (1.0f64 / 0.9) as f32)
        );
        assert_eq!((hash32(0), hash32(1)), (0, 0x6889_90c0));
        let mask = dropout_mask(key, 24);
        assert!(mask.iter().all(|&f| f == 0.0 || f == key.scale));
        let dropped: Vec<usize> = mask
            .iter()
            .enumerate()
            .filter(|(_, &f)| f == 0.0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(dropped, [6]);
    }
}
