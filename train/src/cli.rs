//! The `train` command line: the `train` binary and `imdb-lora train` parse and run it here.

use clap::Parser;

/// Fine-tune the model with LoRA → artifacts/train.
#[derive(Parser)]
#[command(
    version,
    about = "Fine-tune the model with LoRA → artifacts/train (adapter, history, summary)",
    long_about = "Fine-tune the model with LoRA → artifacts/train (adapter, history, summary).\n\n\
        Reads artifacts/tokens/{train,validation}.safetensors (from `just tokenize`) and the \
        model (model.source, through the Hugging Face cache or a local folder), adds LoRA \
        adapters as the lora.* keys say and trains them with the training.* keys. Writes \
        adapter/ (PEFT format: the best epoch by validation loss, or the last, as \
        training.keep says), history.parquet and summary.json. Resumable checkpoints are \
        written to artifacts/checkpoints/train while it runs: a run that is stopped resumes \
        from the newest one made with the same config and inputs. Does nothing when the \
        outputs are up to date, unless --force."
)]
pub struct Cli {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
}

/// Parses `args` (the first is the program name) and runs the stage; exits with status 1 on failure.
pub fn main(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) {
    pipeline::cli::stage_main(
        "train",
        args,
        |cli: &Cli| &cli.common,
        |_| crate::Train::default(),
    );
}
