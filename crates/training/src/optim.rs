//! Optimizers as `torch.optim` defines them: AdamW, Adam, SGD and RMSprop.
//!
//! candle-nn's AdamW cannot export or import its moment estimates, which resuming a run
//! exactly needs, so these work directly on `Var`s and a `GradStore` and expose their state
//! as named tensors. State is kept in f32 (the trainable parameters are f32 too), and every
//! update follows PyTorch's single-tensor code path operation by operation (the same
//! rounding points), with scalars computed in f64 as Python does.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};
use lora_classifier::Kernels;

/// The algorithm, as `torch.optim` defines it (the enum `training.optimizer` takes too).
pub use choices::OptimizerKind;

/// An algorithm with its hyper-parameters (the learning rate is given per step). Each
/// algorithm reads the fields PyTorch's does; the constructors set the others to PyTorch's
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    pub kind: OptimizerKind,
    /// Adam(W): the decay rates of the first and second moment estimates.
    pub beta1: f64,
    pub beta2: f64,
    /// Adam(W) and RMSprop: added to the denominator.
    pub eps: f64,
    /// AdamW: decoupled decay; the others: L2, added to the gradient.
    pub weight_decay: f64,
    /// SGD and RMSprop.
    pub momentum: f64,
    /// RMSprop: the decay rate of the squared-gradient average.
    pub alpha: f64,
}

impl OptimizerSettings {
    const DEFAULTS: OptimizerSettings = OptimizerSettings {
        kind: OptimizerKind::AdamW,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.0,
        alpha: 0.99,
    };

    /// `torch.optim.AdamW`.
    pub fn adamw(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..Self::DEFAULTS
        }
    }

    /// `torch.optim.Adam`.
    pub fn adam(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self {
            kind: OptimizerKind::Adam,
            ..Self::adamw(beta1, beta2, eps, weight_decay)
        }
    }

    /// `torch.optim.SGD`.
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            momentum,
            weight_decay,
            ..Self::DEFAULTS
        }
    }

    /// `torch.optim.RMSprop`.
    pub fn rmsprop(alpha: f64, eps: f64, momentum: f64, weight_decay: f64) -> Self {
        Self {
            kind: OptimizerKind::RmsProp,
            alpha,
            eps,
            momentum,
            weight_decay,
            ..Self::DEFAULTS
        }
    }

    /// The state tensors kept per parameter, by the names PyTorch's state dict uses.
    fn slots(&self) -> &'static [&'static str] {
        match self.kind {
            OptimizerKind::AdamW | OptimizerKind::Adam => &["exp_avg", "exp_avg_sq"],
            OptimizerKind::Sgd if self.momentum != 0.0 => &["momentum_buffer"],
            OptimizerKind::Sgd => &[],
            OptimizerKind::RmsProp if self.momentum > 0.0 => &["square_avg", "momentum_buffer"],
            OptimizerKind::RmsProp => &["square_avg"],
        }
    }
}

/// Per-parameter state: PyTorch counts steps per parameter (a parameter without a gradient
/// is skipped and its count does not advance).
#[derive(Debug, Clone)]
struct ParamState {
    step: u64,
    /// One tensor per slot; empty until the first step (as PyTorch's lazy state).
    buffers: Vec<Tensor>,
}

/// An optimizer over named parameters.
pub struct Optimizer {
    settings: OptimizerSettings,
    params: Vec<(String, Var)>,
    state: Vec<ParamState>,
    steps: u64,
    kernels: Kernels,
}

/// The optimizer's state for a checkpoint: `steps` calls to [`Optimizer::step`], and tensors
/// named `<slot>/<param>` plus `step/<param>` (a [1] f64 tensor: PyTorch's per-parameter count).
pub struct OptimizerState {
    pub steps: u64,
    pub tensors: Vec<(String, Tensor)>,
}

impl Optimizer {
    pub fn new(settings: OptimizerSettings, params: Vec<(String, Var)>) -> Result<Self> {
        for (name, var) in &params {
            if var.dtype() != DType::F32 {
                bail!(
                    "parameter {name} is {:?}; the optimizers keep f32 parameters",
                    var.dtype()
                );
            }
        }
        let state = vec![
            ParamState {
                step: 0,
                buffers: Vec::new()
            };
            params.len()
        ];
        Ok(Self {
            settings,
            params,
            state,
            steps: 0,
            kernels: Kernels::from_env(),
        })
    }

    pub fn settings(&self) -> OptimizerSettings {
        self.settings
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// How many times [`Optimizer::step`] ran.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of every parameter that has a gradient in `grads`, with learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for ((name, var), state) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let grad = grad.to_dtype(DType::F32)?;
            let p = var.as_tensor();
            if state.buffers.is_empty() {
                state.buffers = self
                    .settings
                    .slots()
                    .iter()
                    .map(|_| p.zeros_like())
                    .collect::<candle_core::Result<_>>()?;
            }
            state.step += 1;
            let k = self.settings;
            if Self::fused_on(self.kernels, p) && k.kind == OptimizerKind::AdamW {
                let s = AdamScalars::new(k.beta1, k.beta2, k.eps, k.weight_decay, state.step, lr);
                let (m, v) = (&state.buffers[0], &state.buffers[1]);
                let op = crate::cuda::AdamWStep {
                    g: &grad.contiguous()?,
                    m,
                    v,
                    s,
                };
                p.inplace_op1(&op)
                    .with_context(|| format!("updating {name}"))?;
                continue;
            }
            let new = update(self.settings, p, &grad, &mut state.buffers, state.step, lr)
                .with_context(|| format!("updating {name}"))?;
            var.set(&new)?;
        }
        self.steps += 1;
        Ok(())
    }

    /// Which implementation `step` uses: `Kernels::Auto` (the default, or as `KERNELS_ENV`
    /// says) runs AdamW as one CUDA kernel per parameter on a GPU; `Composed` always composes
    /// candle ops (the reference; the results are equal bit for bit).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Whether `step` runs the fused AdamW kernel on any parameter (a comparison of the fused
    /// update with the composed one checks something only then).
    pub fn runs_fused(&self) -> bool {
        self.settings.kind == OptimizerKind::AdamW
            && self
                .params
                .iter()
                .any(|(_, v)| Self::fused_on(self.kernels, v.as_tensor()))
    }

    fn fused_on(kernels: Kernels, p: &Tensor) -> bool {
        cfg!(feature = "cuda") && kernels == Kernels::Auto && p.device().is_cuda()
    }

    pub fn export_state(&self) -> Result<OptimizerState> {
        let mut tensors = Vec::new();
        for ((name, var), state) in self.params.iter().zip(&self.state) {
            let step = Tensor::new(&[state.step as f64], var.device())?;
            tensors.push((format!("step/{name}"), step));
            for (slot, buf) in self.settings.slots().iter().zip(&state.buffers) {
                // A copy: the live buffers are replaced, not mutated, but be safe.
                tensors.push((format!("{slot}/{name}"), buf.copy()?));
            }
        }
        Ok(OptimizerState {
            steps: self.steps,
            tensors,
        })
    }

    /// Restores what [`Optimizer::export_state`] gave, for the same parameters and algorithm.
    pub fn import_state(&mut self, state: OptimizerState) -> Result<()> {
        let mut by_name: HashMap<String, Tensor> = state.tensors.into_iter().collect();
        for ((name, var), ps) in self.params.iter().zip(self.state.iter_mut()) {
            let step = by_name
                .remove(&format!("step/{name}"))
                .with_context(|| format!("optimizer state has no step for {name}"))?;
            let step = step.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            ps.step = *step.first().context("empty step tensor")? as u64;
            ps.buffers.clear();
            if ps.step == 0 {
                continue;
            }
            for slot in self.settings.slots() {
                let key = format!("{slot}/{name}");
                let t = by_name
                    .remove(&key)
                    .with_context(|| format!("optimizer state has no {key}"))?;
                if t.dims() != var.dims() {
                    bail!(
                        "optimizer state {key} is {:?}, the parameter {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                ps.buffers
                    .push(t.to_dtype(DType::F32)?.to_device(var.device())?);
            }
        }
        if let Some(extra) = by_name.keys().next() {
            bail!("optimizer state has {extra}, which matches no parameter of this optimizer");
        }
        self.steps = state.steps;
        Ok(())
    }
}

/// The scalars of an Adam(W) step, in f64 as Python computes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamScalars {
    /// 1 − lr · weight_decay (AdamW's decoupled decay).
    pub decay: f64,
    /// The lerp weight of exp_avg towards the gradient, 1 − beta1.
    pub w: f64,
    pub beta2: f64,
    pub bias_correction2: f64,
    pub eps: f64,
    /// lr / (1 − beta1^step).
    pub step_size: f64,
}

impl AdamScalars {
    fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64, step: u64, lr: f64) -> Self {
        Self {
            decay: 1.0 - lr * weight_decay,
            w: 1.0 - beta1,
            beta2,
            bias_correction2: 1.0 - beta2.powi(step as i32),
            eps,
            step_size: lr / (1.0 - beta1.powi(step as i32)),
        }
    }
}

/// The new parameter value; updates `buf` in place. Each line mirrors PyTorch's code.
fn update(
    settings: OptimizerSettings,
    p: &Tensor,
    grad: &Tensor,
    buf: &mut [Tensor],
    step: u64,
    lr: f64,
) -> candle_core::Result<Tensor> {
    // grad = grad.add(param, alpha=weight_decay)
    let l2 = |grad: &Tensor, wd: f64| -> candle_core::Result<Tensor> {
        if wd != 0.0 {
            grad + p.affine(wd, 0.0)?
        } else {
            Ok(grad.clone())
        }
    };
    let OptimizerSettings {
        kind,
        beta1,
        beta2,
        eps,
        weight_decay,
        momentum,
        alpha,
    } = settings;
    match kind {
        OptimizerKind::AdamW | OptimizerKind::Adam => {
            let s = AdamScalars::new(beta1, beta2, eps, weight_decay, step, lr);
            let decoupled = kind == OptimizerKind::AdamW;
            let (p, grad) = if decoupled {
                // param.mul_(1 - lr * weight_decay)
                (p.affine(s.decay, 0.0)?, grad.clone())
            } else {
                (p.clone(), l2(grad, weight_decay)?)
            };
            // exp_avg.lerp_(grad, 1 - beta1): ATen computes self + w * (end - self) for w < 0.5.
            let w = s.w;
            buf[0] = if w < 0.5 {
                (&buf[0] + (&grad - &buf[0])?.affine(w, 0.0)?)?
            } else {
                (&grad - (&grad - &buf[0])?.affine(1.0 - w, 0.0)?)?
            };
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            buf[1] = (buf[1].affine(s.beta2, 0.0)? + (grad.affine(1.0 - s.beta2, 0.0)? * &grad)?)?;
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            let denom = (buf[1].sqrt()? / s.bias_correction2.sqrt())?.affine(1.0, s.eps)?;
            // param.addcdiv_(exp_avg, denom, value=-step_size)
            &p + (&buf[0] / &denom)?.affine(-s.step_size, 0.0)?
        }
        OptimizerKind::Sgd => {
            let mut d_p = l2(grad, weight_decay)?;
            if momentum != 0.0 {
                // First step: buf = clone(grad); then buf.mul_(momentum).add_(grad) (dampening 0).
                buf[0] = if step == 1 {
                    d_p.clone()
                } else {
                    (buf[0].affine(momentum, 0.0)? + &d_p)?
                };
                d_p = buf[0].clone();
            }
            // param.add_(grad, alpha=-lr)
            p + d_p.affine(-lr, 0.0)?
        }
        OptimizerKind::RmsProp => {
            let grad = l2(grad, weight_decay)?;
            // square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
            buf[0] = (buf[0].affine(alpha, 0.0)? + (grad.affine(1.0 - alpha, 0.0)? * &grad)?)?;
            // avg = square_avg.sqrt().add_(eps)
            let avg = buf[0].sqrt()?.affine(1.0, eps)?;
            if momentum > 0.0 {
                // buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf, alpha=-lr)
                buf[1] = (buf[1].affine(momentum, 0.0)? + (&grad / &avg)?)?;
                p + buf[1].affine(-lr, 0.0)?
            } else {
                // param.addcdiv_(grad, avg, value=-lr)
                p + (&grad / &avg)?.affine(-lr, 0.0)?
            }
        }
    }
}
