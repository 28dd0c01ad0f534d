//! The key of a dropout mask, the same on every device: which elements of a dropout site are
//! kept is a counter-based hash of (seed, site, element index), reproducible on any device and
//! thread count and independent of candle's (on the CPU unseedable) RNG. The CPU kernels
//! (`cpu::dropout`) and the CUDA kernels (`cuda/kernels.cu`) compute masks from [`DropKey`]'s
//! fields and [`hash32`]: change nothing here without changing both.

use std::ops::Range;

use common::hash::splitmix64;

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
    pub(crate) fn runs(&self, first: usize, len: usize, mut f: impl FnMut(Range<usize>, usize)) {
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
    pub(crate) fn factor(&self, i: u32) -> f32 {
        if hash32(hash32(i ^ self.k0) ^ self.k1) >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}
