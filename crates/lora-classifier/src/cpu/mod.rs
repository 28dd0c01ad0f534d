//! Fused f32 CPU kernels over slices: the `ops` layer runs them as candle custom ops.
//!
//! Stock candle spends much of its CPU time around the GEMMs: scalar `erf`, a fresh buffer and
//! an autograd node per elementwise op, transposed copies for attention and, in the backward
//! pass, weight gradients of frozen weights. Here a frozen linear layer is one GEMM with its
//! bias (and GELU when no gradient is needed), and its LoRA branch joins it in the same call,
//! whose backward pass computes dx, dA and dB only; attention reads Q, K, V in place; LayerNorm
//! takes the residual and dropout along; GELU and LayerNorm have hand-written gradients.
//!
//! Frozen weights may also be bf16 or int8 (`packed`): the activations stay f32 and only the
//! frozen layers' GEMMs run in low precision (AVX512-BF16 / AVX512-VNNI microkernels in
//! `avx512`, a portable fallback elsewhere), as PyTorch's autocast and ONNX Runtime's dynamic
//! quantization do.
//!
//! Nothing here knows candle's autograd or the models: a kernel takes slices (and a `Layout`
//! where a view is strided) and returns or writes buffers.
//!
//! - `matrix`: output buffers, tensor data access, strided matrix views, the GEMM;
//! - `linear`: frozen linear layers and their LoRA branches;
//! - `norm`: LayerNorm with residual add and dropout;
//! - `elementwise`: GELU and the activations linear layers fuse;
//! - `attention`: multi-head attention, and the masked softmax and head swap it is composed
//!   of where it is not fused;
//! - `packed`: bf16 and int8 weights packed for their GEMMs, and those GEMMs;
//! - `avx512`: the GEMMs' microkernels and conversions (x86-64, checked at run time);
//! - `amx`: the same GEMMs on AMX tiles, and a scalar model of the tile instructions (x86-64;
//!   off unless `IMDB_LORA_CPU_ISA=amx` until it has run on an AMX machine);
//! - `dropout`: dropout with the masks of `crate::dropout_mask`, forward and backward;
//! - `simd`: the elementwise and row loops, compiled per instruction set.

#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dropout;
mod elementwise;
mod linear;
mod matrix;
mod norm;
mod packed;
#[cfg(test)]
mod packed_tests;
mod simd;

#[cfg(target_arch = "x86_64")]
pub(crate) use amx::cpu_has as amx_cpu_has;
pub(crate) use attention::{
    inputs, masked_softmax, masked_softmax_backward, swap_middle, Heads, Rows,
};
pub(crate) use dropout::{dropout, dropout_mask};
pub(crate) use elementwise::{gelu, gelu_backward};
pub(crate) use linear::{Linear, Weight};
pub(crate) use matrix::{contiguous, data};
pub(crate) use norm::Norm;
pub(crate) use packed::{Isa, PackedLinear, Precision, ISA_ENV};

/// Elements per rayon task in elementwise kernels.
const CHUNK: usize = 16384;

/// Rows per rayon task for row kernels of `row_len` elements.
fn rows_per_task(row_len: usize) -> usize {
    (CHUNK / row_len.max(1)).max(1)
}
