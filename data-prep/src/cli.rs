//! The `data-prep` command line: the `data-prep` binary and `imdb-lora data-prep` parse and run it here.

use clap::Parser;

/// Prepare the IMDb splits: sample train, split test into validation and test.
#[derive(Parser)]
#[command(
    name = "data-prep",
    version,
    long_about = "Prepare the IMDb splits → <artifacts>/data/{train,validation,test}.parquet, \
summary.json and stamp.json.

Reads `data.source`: a Hugging Face dataset id (default stanfordnlp/imdb, through the HF cache \
at $HF_HOME; HF_HUB_OFFLINE=1 never downloads), a local folder of {train,test}-*.parquet \
(or plain_text/ inside it), an aclImdb/ folder or aclImdb_v1.tar.gz. Samples \
`data.train_fraction` of train and splits the shuffled test into validation \
(`data.validation_fraction`) and test, all seeded by `seed`; `data.stratify` keeps the label \
balance exact and `data.max_*` cap the splits for smoke runs.

Does nothing when the outputs already match the config and the source (unless --force)."
)]
pub struct Cli {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
}

/// Parses `args` (the first is the program name) and runs the stage; exits with status 1 on failure.
pub fn main(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) {
    pipeline::cli::stage_main(
        "data-prep",
        args,
        |cli: &Cli| &cli.common,
        |_| crate::DataPrep::default(),
    );
}
