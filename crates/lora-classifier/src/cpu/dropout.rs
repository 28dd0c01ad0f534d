//! Dropout masks from a counter-based hash: reproducible from (seed, site, element index) on
//! any device and thread count, independent of candle's (on the CPU unseedable) RNG. Another
//! device's kernel reproduces the same masks from [`DropKey`]'s fields and [`hash32`]: change
//! nothing here without changing it there.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use common::hash::splitmix64;
use rayon::prelude::*;

use super::matrix::{assume_init, contiguous, uninit_buffer};
use super::simd::{dropout_factors, dropout_into};
use super::CHUNK;

/// The dropout site of mask `which` in encoder layer `layer` (0: attention probabilities,
/// 1: attention output, 2: MLP output); LoRA branches use a hash of their module path.
pub(crate) fn layer_site(layer: usize, which: u64) -> u64 {
    ((layer as u64 + 1) << 8) | which
}

/// The mask of one dropout site: element i is kept, scaled by `scale`, when
/// `hash32(hash32(i ^ k0) ^ k1) >= threshold`, and zeroed otherwise.
///
/// i is the element's index in the full tensor of the site. A key [`placed`](Self::placed) on
/// a tensor holding only the first rows of each sequence reads the full tensor's mask at its
/// elements' positions there (`block`, `stride`); other devices' kernels take identity keys only.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DropKey {
    pub(crate) k0: u32,
    pub(crate) k1: u32,
    pub(crate) threshold: u32,
    pub(crate) scale: f32,
    /// Element j of the tensor is element (j / block)·stride + j mod block of the full one;
    /// 0 for the identity.
    block: usize,
    stride: usize,
}

/// Chris Wellons' lowbias32.
#[inline(always)]
pub(crate) fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

impl DropKey {
    /// Zeroes each element with probability `p` and scales the rest by 1/(1-p).
    pub(crate) fn new(p: f64, seed: u64, site: u64) -> Self {
        let h = splitmix64(seed ^ splitmix64(site));
        let threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        let scale = if p >= 1.0 {
            0.0
        } else {
            (1.0 / (1.0 - p)) as f32
        };
        Self {
            k0: h as u32,
            k1: (h >> 32) as u32,
            threshold,
            scale,
            block: 0,
            stride: 0,
        }
    }

    /// This mask as seen by a tensor that holds the first `kept` of every `of` rows of `width`
    /// elements of the site's full tensor (e.g. the [CLS] rows of [batch, seq, hidden]): its
    /// elements get the factors they have in the full tensor. A key already placed stays as it is.
    pub(crate) fn placed(self, kept: usize, of: usize, width: usize) -> Self {
        if kept >= of || self.block != 0 {
            return self;
        }
        Self {
            block: kept * width,
            stride: of * width,
            ..self
        }
    }

    /// Mask factors are read at consecutive full-tensor indices (no placement).
    pub(crate) fn is_identity(&self) -> bool {
        self.block == 0
    }

    /// Splits elements [first, first + len) of the tensor into runs of consecutive full-tensor
    /// indices: `f(range in 0..len, full index of its first element)`.
    #[inline]
    pub(super) fn runs(&self, first: usize, len: usize, mut f: impl FnMut(Range<usize>, usize)) {
        if self.block == 0 {
            return f(0..len, first);
        }
        let mut at = 0;
        while at < len {
            let j = first + at;
            let (block, offset) = (j / self.block, j % self.block);
            let end = (at + self.block - offset).min(len);
            f(at..end, block * self.stride + offset);
            at = end;
        }
    }

    #[inline(always)]
    pub(super) fn factor(&self, i: u32) -> f32 {
        if hash32(hash32(i ^ self.k0) ^ self.k1) >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// The mask of `n` elements, for the composed path on other devices.
    pub(crate) fn mask(&self, n: usize) -> Vec<f32> {
        let mut v = uninit_buffer(n);
        v.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| dropout_factors(c, i * CHUNK, *self));
        // SAFETY: the chunks cover the buffer and `dropout_factors` writes each whole.
        unsafe { assume_init(v) }
    }

    /// dropout(x) into a new buffer.
    pub(super) fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = uninit_buffer(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(i, (y, x))| dropout_into(x, y, i * CHUNK, *self));
        // SAFETY: the chunks cover the buffer and `dropout_into` writes each whole.
        unsafe { assume_init(y) }
    }
}

/// Elementwise dropout; its backward pass applies the same mask to the gradient.
pub(crate) struct Dropout(pub DropKey);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(self.0.apply(contiguous(s, l)?)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_masks_never_change() {
        // The CUDA kernel and saved training runs depend on these bits: values computed
        // independently (Python) from the definitions above.
        let key = DropKey::new(0.1, 42, layer_site(3, 1));
        assert_eq!(
            (key.k0, key.k1, key.threshold, key.scale),
            (0x42fb_d768, 0xc736_fbd2, 429_496_730, (1.0f64 / 0.9) as f32)
        );
        assert_eq!((hash32(0), hash32(1)), (0, 0x6889_90c0));
        let mask = key.mask(24);
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
