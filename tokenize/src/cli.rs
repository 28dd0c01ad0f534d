//! The `tokenize` command line: the `tokenize` binary and `imdb-lora tokenize` parse and run it here.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Tokenize every data split to padded tensors → artifacts/tokens",
    long_about = "Tokenize every data split to padded tensors → artifacts/tokens.\n\n\
        Reads artifacts/data/{train,validation,test}.parquet (from `just data-prep`) and \
        encodes each review with the model's tokenizer.json (model.source, through the \
        Hugging Face cache or a local folder), padded and truncated to model.max_len tokens \
        exactly as transformers' `tokenizer(text, padding=\"max_length\", truncation=True)` \
        does; GPT-2, which has no pad token, is padded with eos. Writes \
        {split}.safetensors (input_ids, attention_mask, labels, rows) and summary.json (count \
        and share truncated per split). Does nothing when the outputs are up to date with \
        the data, the tokenizer and the model.* keys, unless --force."
)]
pub struct Cli {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
}

/// Parses `args` (the first is the program name) and runs the stage; exits with status 1 on failure.
pub fn main(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) {
    pipeline::cli::stage_main(
        "tokenize",
        args,
        |cli: &Cli| &cli.common,
        |_| crate::Tokenize::default(),
    );
}
