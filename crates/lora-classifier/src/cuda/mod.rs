//! CUDA kernels (`kernels.cu`, compiled to PTX by build.rs) and their launches, for the ops of
//! `crate::ops` to call from their `cuda_fwd`: dropout with the CPU's masks (no host-generated
//! mask uploaded per call), the attention's masked softmax and head swap, residual + LayerNorm,
//! GELU and the linear layers' bias add, each one launch forward and one backward where
//! candle's composed ops take five to fifteen (and its autograd as many again).
//!
//! `Kernels::Composed` turns them off, so tests and `imdb-lora check-kernels` can compare them
//! with the composed ops on the same device. Only built with the `cuda` feature.

pub(crate) mod launch;
