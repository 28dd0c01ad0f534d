//! Learning-rate schedules as Hugging Face transformers (and PyTorch's StepLR) define them.
//!
//! `lr(t)` is the rate optimizer step `t` (0-based) runs with: HF calls `scheduler.step()`
//! after `optimizer.step()`, so step 0 runs with the schedule's value at 0.

/// The schedule's shape after warmup (the enum `training.scheduler` takes too).
pub use choices::ScheduleKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// [`ScheduleKind::Step`]: multiply the rate by `gamma` every `step_size` steps.
    pub step_size: u64,
    pub gamma: f64,
}

/// HF's `get_warmup_steps`: the explicit count, else `ceil(total * ratio)`.
pub fn warmup_steps(warmup_steps: u64, warmup_ratio: f64, total_steps: u64) -> u64 {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (total_steps as f64 * warmup_ratio).ceil() as u64
    }
}

impl Schedule {
    /// The multiplier of the base rate at step `t` (HF's `lr_lambda`).
    pub fn factor(&self, t: u64) -> f64 {
        let (t_f, warmup) = (t as f64, self.warmup_steps as f64);
        if t < self.warmup_steps {
            // Linear warmup from 0, as every HF `*_with_warmup` schedule.
            return t_f / warmup.max(1.0);
        }
        let after = (t - self.warmup_steps) as f64;
        let span = (self.total_steps.saturating_sub(self.warmup_steps) as f64).max(1.0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (0.0f64).max((self.total_steps as f64 - t_f) / span),
            ScheduleKind::Cosine => {
                let progress = after / span;
                let num_cycles = 0.5;
                (0.0f64)
                    .max(0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos()))
            }
            ScheduleKind::Step => {
                let k = (t - self.warmup_steps) / self.step_size.max(1);
                self.gamma.powi(k as i32)
            }
        }
    }

    /// The learning rate of optimizer step `t` (0-based).
    pub fn lr(&self, t: u64) -> f64 {
        self.base_lr * self.factor(t)
    }
}
