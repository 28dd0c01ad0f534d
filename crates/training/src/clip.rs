//! Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_` (L2 norm).

use anyhow::Result;
use candle_core::{backprop::GradStore, DType, Var};

/// Scales the gradients of `vars` in `grads` so that their global L2 norm is at most
/// `max_norm`, and returns the norm before clipping.
///
/// As PyTorch: the total is the norm of the per-tensor norms (f32), the coefficient is
/// `max_norm / (total + 1e-6)` clamped to 1, and every gradient is multiplied by it (a
/// multiplication by 1.0 when the norm is already small, which changes no bit).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sum_sq = 0f32;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            let norm = g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .sqrt()?
                .to_scalar::<f32>()?;
            sum_sq += norm * norm;
        }
    }
    let total = sum_sq.sqrt();
    let coef = (max_norm as f32 / (total + 1e-6)).min(1.0);
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            let clipped = g.affine(coef as f64, 0.0)?;
            grads.insert(var.as_tensor(), clipped);
        }
    }
    Ok(total as f64)
}
