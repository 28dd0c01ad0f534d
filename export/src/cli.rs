//! The `export` command line: the `export` binary and `imdb-lora export` parse and run it here.

use clap::Parser;

/// Export the fine-tuned model as a merged Hugging Face checkpoint.
///
/// Folds the trained LoRA adapter (artifacts/train/adapter) into the base
/// model's weights and writes artifacts/export/: config.json
/// (BertForSequenceClassification / GPT2ForSequenceClassification, labels
/// negative/positive), model.safetensors (in `export.dtype`), tokenizer.json
/// and tokenizer_config.json. Plain transformers loads it:
/// `pipeline("text-classification", model="artifacts/export")`; so does
/// `predict --model artifacts/export`.
#[derive(Parser)]
#[command(version)]
pub struct Cli {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
}

/// Parses `args` (the first is the program name) and runs the stage; exits with status 1 on failure.
pub fn main(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) {
    pipeline::cli::stage_main(
        "export",
        args,
        |cli: &Cli| &cli.common,
        |_| crate::Export::default(),
    );
}
