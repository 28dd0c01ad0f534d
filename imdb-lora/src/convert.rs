//! `imdb-lora convert`: a copy of a Hugging Face checkpoint folder with its floating-point weights
//! cast to bf16 or f16 — half the size to store or carry (the pipeline loads either), the same
//! config and tokenizer files. Shards are joined into one model.safetensors.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "convert",
    about = "Copy a checkpoint folder with its weights cast to bf16 or f16"
)]
struct Args {
    /// A checkpoint folder (config.json, model.safetensors or shards) or a hub model id.
    model: String,
    /// The folder to write (must not exist).
    out: PathBuf,
    /// bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
}

/// The non-weight files copied along when present.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

pub fn main(argv: impl Iterator<Item = OsString>) {
    let args = Args::parse_from(argv);
    pipeline::cli::run_stage("convert", || run(&args));
}

fn run(args: &Args) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("--dtype {other:?}: expected bf16 or f16"),
    };
    if args.out.exists() {
        bail!("{} exists: give a new folder", args.out.display())
    }
    let dir = hub::model_dir(
        &args.model,
        "main",
        hub::Needs {
            weights: true,
            tokenizer: false,
        },
    )?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, path) in pipeline::sources::model_files(&dir)? {
        if !name.ends_with(".safetensors") {
            continue;
        }
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        for (k, t) in loaded {
            let t = if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                t
            };
            tensors.insert(k, t);
        }
    }
    let staged = pipeline::atomic::StagingDir::new(&args.out)?;
    for file in SIDE_FILES {
        let src = dir.join(file);
        if src.exists() {
            std::fs::copy(&src, staged.path().join(file))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    candle_core::safetensors::save(&tensors, staged.path().join("model.safetensors"))?;
    staged.commit()?;
    println!(
        "convert: {} tensors as {} → {}",
        tensors.len(),
        args.dtype,
        args.out.display()
    );
    Ok(())
}
