//! Merges a PEFT LoRA adapter into its base model and writes a Hugging Face checkpoint that
//! plain transformers loads: the library's export without the pipeline (`just export` is the
//! pipeline's stage).
//!
//! cargo run --release -p lora-classifier --example export_merged -- MODEL_DIR ADAPTER_DIR OUT_DIR \
//!     [MAX_LEN (128)] [f32|bf16|f16]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use lora_classifier::{Checkpoint, ExportOptions, SequenceClassifier};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, adapter, out, rest @ ..] = args.as_slice() else {
        bail!("usage: export_merged MODEL_DIR ADAPTER_DIR OUT_DIR [MAX_LEN] [f32|bf16|f16]")
    };
    let max_len = match rest.first() {
        Some(n) => n.parse().with_context(|| format!("MAX_LEN {n:?}"))?,
        None => 128,
    };
    let dtype = match rest.get(1) {
        Some(d) => d.parse()?,
        None => lora_classifier::ExportDtype::F32,
    };
    let ckpt = Checkpoint::open(&PathBuf::from(model))?;
    let m =
        SequenceClassifier::load_adapter(&ckpt, &PathBuf::from(adapter), &Device::Cpu, DType::F32)?;
    m.export_merged(
        &ckpt,
        &PathBuf::from(out),
        ExportOptions {
            dtype,
            max_len,
            truncation: lora_classifier::Truncation::Head,
        },
    )?;
    println!("exported to {out}");
    Ok(())
}
