//! Differentiable building blocks, one file an op: the one dispatch point between
//! implementations. Each file holds its op type, whose one candle `CustomOp` impl carries
//! `cpu_fwd` (the slice kernels of `crate::cpu`), `cuda_fwd` (the launches of `crate::cuda`,
//! `cuda` feature) and the backward pass; the function the models call, which picks the op
//! where it applies (`Ctx::fused_for`, `Ctx::cuda_for`); and the composed candle ops (any
//! device and dtype, candle's autograd), which `Kernels::Composed` forces everywhere as the
//! reference the others are tested against.
//!
//! The `*_grad` functions and [`AttentionTape`] are the same ops' backward passes called outside
//! candle's autograd, for the hand-written backward pass of a training step (`bert::grad`).
//!
//! A new kernel variant (an AMX GEMM, a GPU fusion) is a function in `cpu/` or `cuda/` plus a
//! line in its op's `cpu_fwd` or `cuda_fwd`; a new op is a file here.
//!
//! - `linear`: frozen linear layers ([`Frozen`]), alone or with their LoRA branch;
//! - `layer_norm`: LayerNorm, with the residual add and dropout before it;
//! - `gelu`: GELU, exact or tanh-approximated ([`activation`]);
//! - `dropout`: dropout with the masks of `crate::dropout_mask`;
//! - `attention`: multi-head attention with the key mask ([`KeyMask`]).

mod attention;
mod dropout;
mod gelu;
mod layer_norm;
mod linear;
#[cfg(test)]
mod tests;

use candle_core::{DType, Result, Tensor, Var};

pub(crate) use attention::{attention, AttentionSpec, AttentionTape, KeyMask};
pub(crate) use dropout::dropout;
pub(crate) use gelu::{activation, activation_grad};
pub(crate) use layer_norm::{add_layer_norm, add_layer_norm_grad, layer_norm, layer_norm_grad};
pub(crate) use linear::{
    linear, lora_linear, lora_linear_grad, Frozen, Isa, PackedLinear, Precision,
};

use crate::dropout_mask::DropKey;

/// Added to the attention scores of masked keys. HF adds finfo.min; any value this negative
/// gives the same probabilities, and two of them still add up to a finite number.
pub(crate) const MASKED: f32 = -1e30;

/// What one forward pass runs with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    /// Use the fused CPU kernels where they apply.
    pub fused: bool,
    /// Some(seed) in training mode: dropout is active.
    pub dropout_seed: Option<u64>,
    /// Read trainable parameters as plain tensors: no autograd graph (inference).
    pub detach: bool,
    /// Some((kept, of)): the tensors hold the first `kept` of every `of` positions of each
    /// sequence (the last BERT layer computes [CLS] only); dropout keys are placed so that
    /// these rows get the masks they have in the full tensors.
    pub rows: Option<(usize, usize)>,
}

impl Ctx {
    pub fn param(&self, v: &Var) -> Tensor {
        if self.detach {
            v.as_detached_tensor()
        } else {
            v.as_tensor().clone()
        }
    }

    /// The dropout mask key of a dropout site, None when dropout is off.
    pub fn dropout(&self, p: f64, site: u64) -> Option<DropKey> {
        match self.dropout_seed {
            Some(seed) if p > 0.0 => Some(DropKey::new(p, seed, site)),
            _ => None,
        }
    }

    /// This pass computing only the first `kept` of every `of` positions.
    pub fn first_rows(&self, kept: usize, of: usize) -> Ctx {
        Ctx {
            rows: Some((kept, of)),
            ..*self
        }
    }

    /// `key` for a tensor of rows of `width` elements in this pass (see `rows`).
    fn place(&self, key: Option<DropKey>, width: usize) -> Option<DropKey> {
        match (key, self.rows) {
            (Some(k), Some((kept, of))) => Some(k.placed(kept, of, width)),
            _ => key,
        }
    }

    fn fused_for(&self, ts: &[&Tensor]) -> bool {
        self.fused
            && ts
                .iter()
                .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
    }

    /// The CUDA kernels apply: every tensor on a CUDA device in a float type they handle.
    fn cuda_for(&self, ts: &[&Tensor]) -> bool {
        cfg!(feature = "cuda")
            && self.fused
            && ts.iter().all(|t| {
                t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
            })
    }
}

/// Whether the ops' kernels (which the hand-written backward passes run) apply to activations
/// of `t`'s dtype and device: f32 on the CPU (bf16 weights there are packed, the activations
/// f32), any float type on a GPU.
pub(crate) fn kernels_apply(t: &Tensor) -> bool {
    match t.device() {
        candle_core::Device::Cpu => t.dtype() == DType::F32,
        candle_core::Device::Cuda(_) => t.dtype().is_float(),
        _ => false,
    }
}

/// `op(x)`, recording the op for autograd only when x needs a gradient.
fn apply1<C: candle_core::CustomOp1 + Send + Sync + 'static>(x: &Tensor, op: C) -> Result<Tensor> {
    if x.track_op() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}

/// `op(x, y)`, recorded for autograd only when an input needs a gradient.
fn apply2<C: candle_core::CustomOp2 + Send + Sync + 'static>(
    x: &Tensor,
    y: &Tensor,
    op: C,
) -> Result<Tensor> {
    if x.track_op() || y.track_op() {
        x.apply_op2(y, op)
    } else {
        x.apply_op2_no_bwd(y, &op)
    }
}

/// `op(x, y, z)`, recorded for autograd only when an input needs a gradient.
fn apply3<C: candle_core::CustomOp3 + Send + Sync + 'static>(
    x: &Tensor,
    y: &Tensor,
    z: &Tensor,
    op: C,
) -> Result<Tensor> {
    if [x, y, z].iter().any(|t| t.track_op()) {
        x.apply_op3(y, z, op)
    } else {
        x.apply_op3_no_bwd(y, z, &op)
    }
}
