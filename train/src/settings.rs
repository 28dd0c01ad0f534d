//! `pipeline.yaml`'s `seed`, `lora` and `training` sections as the libraries' settings.

use lora_classifier::LoraSettings;
use pipeline::config::{Config, KeepAdapter, OptimizerKind};
use training::{OptimizerSettings, TrainSettings};

/// PyTorch's RMSprop defaults for what the config does not set.
const RMSPROP_ALPHA: f64 = 0.99;
const RMSPROP_EPS: f64 = 1e-8;

pub fn lora_settings(config: &Config) -> LoraSettings {
    let l = &config.lora;
    LoraSettings {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        bias: l.bias,
        // Empty = the architecture's default.
        target_modules: l.target_modules.clone().unwrap_or_default(),
        layer_norm: l.layer_norm,
        use_rslora: l.use_rslora,
    }
}

pub fn train_settings(config: &Config) -> TrainSettings {
    let t = &config.training;
    let optimizer = match t.optimizer {
        OptimizerKind::AdamW => {
            OptimizerSettings::adamw(t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay)
        }
        OptimizerKind::Adam => {
            OptimizerSettings::adam(t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay)
        }
        OptimizerKind::Sgd => OptimizerSettings::sgd(t.momentum, t.weight_decay),
        OptimizerKind::RmsProp => {
            OptimizerSettings::rmsprop(RMSPROP_ALPHA, RMSPROP_EPS, t.momentum, t.weight_decay)
        }
    };
    TrainSettings {
        seed: config.seed,
        optimizer,
        learning_rate: t.learning_rate,
        schedule: t.scheduler,
        step_size: t.step_size as u64,
        step_gamma: t.step_gamma,
        warmup_steps: t.warmup_steps as u64,
        warmup_ratio: t.warmup_ratio,
        batch_size: t.batch_size,
        gradient_accumulation_steps: t.gradient_accumulation_steps,
        epochs: t.epochs,
        max_steps: t.max_steps.map(|n| n as u64),
        early_stopping_patience: t.early_stopping_patience.map(|n| n as u32),
        max_grad_norm: t.max_grad_norm,
        eval_every_steps: t.eval_every_steps.map(|n| n as u64),
        checkpoint_every_steps: t.checkpoint_every_steps as u64,
        keep_best: t.keep == KeepAdapter::Best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_optimizer_gets_the_configured_hyper_parameters() {
        let mut c = Config::default();
        c.training.adam_beta1 = 0.8;
        c.training.adam_epsilon = 1e-6;
        c.training.momentum = 0.5;
        c.training.weight_decay = 0.2;
        for kind in OptimizerKind::ALL {
            c.training.optimizer = *kind;
            let o = train_settings(&c).optimizer;
            assert_eq!((o.kind, o.weight_decay), (*kind, 0.2));
            match kind {
                OptimizerKind::AdamW | OptimizerKind::Adam => {
                    assert_eq!((o.beta1, o.beta2, o.eps), (0.8, 0.999, 1e-6))
                }
                OptimizerKind::Sgd => assert_eq!(o.momentum, 0.5),
                // adam_epsilon is Adam's: RMSprop keeps PyTorch's eps.
                OptimizerKind::RmsProp => {
                    assert_eq!((o.momentum, o.alpha, o.eps), (0.5, 0.99, 1e-8))
                }
            }
        }
    }
}
