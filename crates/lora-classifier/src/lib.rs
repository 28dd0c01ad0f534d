//! A transformer sequence classifier (HF's BertForSequenceClassification or
//! GPT2ForSequenceClassification) with PEFT-compatible LoRA adapters, on candle.
//!
//! - `classifier`: the model, [`SequenceClassifier`]: loading, the forward pass ([`Mode`]),
//!   the trainable parameters, merging, and saving adapters and merged checkpoints.
//! - `settings`: the LoRA hyper-parameters ([`LoraSettings`]), as PEFT's LoraConfig.
//! - `kernels`: which code computes the building blocks ([`Kernels`]) and what this CPU offers
//!   the frozen layers ([`cpu_kernels`], [`cpu_has_native_bf16`], [`cpu_has_amx_bf16`]).
//! - `checkpoint`: a Hugging Face checkpoint folder (config.json + safetensors).
//! - `bert`, `gpt2`: the model bodies, computed as transformers computes them.
//! - `lora`: frozen layers with LoRA branches, PEFT's target matching and parameter names.
//! - `adapter`: PEFT's adapter format (adapter_config.json + adapter_model.safetensors).
//! - `export`: a merged Hugging Face checkpoint that plain transformers loads.
//! - `ops`: the differentiable building blocks, one file an op, each one type whose candle
//!   `CustomOp` runs the CPU kernels (`cpu`: f32, bf16 and int8 over slices) or the CUDA ones
//!   (`cuda`: launches of `kernels.cu`), with candle's composed ops as the reference.
//! - `activation`, `dropout_mask`: what every device's kernels take: the activation a layer
//!   fuses, and the key from which each device computes the same dropout mask.
//! - `runtime`: process-wide CPU setup that binaries call first ([`tune_cpu_runtime`]).
//! - `runs_on`: the one-line name of the code that computes a model's frozen layers.
//!
//! ```no_run
//! use std::path::Path;
//! use candle_core::{DType, Device, Tensor};
//! use lora_classifier::{Checkpoint, LoraBias, LoraSettings, Mode, SequenceClassifier};
//! # fn main() -> anyhow::Result<()> {
//! lora_classifier::tune_cpu_runtime();
//! let ckpt = Checkpoint::open(Path::new("…/snapshots/<rev>"))?;
//! let lora = LoraSettings {
//!     r: 8, alpha: 32.0, dropout: 0.1, bias: LoraBias::None,
//!     target_modules: vec![], // the model type's default: query, value / c_attn
//!     layer_norm: false, use_rslora: false,
//! };
//! let model = SequenceClassifier::new(&ckpt, Some(&lora), 42, &Device::Cpu, DType::F32)?;
//! println!("{}", model.parameter_counts());
//! let ids = Tensor::new(&[[101u32, 2307, 3185, 102]], &Device::Cpu)?;
//! let mask = Tensor::ones((1, 4), DType::U32, &Device::Cpu)?;
//! let logits = model.forward(&ids, &mask, Mode::Train { dropout_seed: 7 })?;
//! let loss = candle_nn::loss::cross_entropy(&logits, &Tensor::new(&[1u32], &Device::Cpu)?)?;
//! let grads = loss.backward()?;
//! for (_name, var) in model.trainable() {
//!     let _grad = grads.get(&var); // … an optimizer step
//! }
//! model.save_adapter(Path::new("adapter"))?;
//! # Ok(())
//! # }
//! ```

mod activation;
mod adapter;
mod bert;
mod checkpoint;
mod classifier;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod dropout_mask;
mod export;
mod gpt2;
mod kernels;
mod lora;
mod ops;
mod runs_on;
mod runtime;
mod settings;
#[cfg(test)]
mod test_util;

pub use checkpoint::{all_finite, Checkpoint};
pub use classifier::{Architecture, BatchGrads, Mode, ParameterCounts, SequenceClassifier};
pub use export::{ExportDtype, ExportOptions, Truncation, EXPORT_FILES, LABELS};
pub use kernels::{
    cpu_has_amx_bf16, cpu_has_native_bf16, cpu_kernels, Kernels, CPU_ISA_ENV, KERNELS_ENV,
};
pub use runs_on::{runs_on, FrozenWeights};
pub use runtime::tune_cpu_runtime;
pub use settings::{LoraBias, LoraSettings, ALL_LINEAR};
