//! The `tokenize` command line: the `tokenize` binary and `imdb-lora tokenize` parse and run it here.

use crate::Outcome;
use clap::Parser;
use pipeline::Split;

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

/// Parses `args` (the first is the program name, as in `std::env::args_os()`) and runs the
/// stage; prints the error and exits with status 1 on failure.
pub fn main<I, T>(args: I)
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Cli::parse_from(args);
    pipeline::cli::run_stage("tokenize", || {
        let Some(config) = args.common.load()? else {
            return Ok(());
        };
        match crate::run(&config, args.common.force)? {
            Outcome::UpToDate { dir } => println!("tokenize: up to date ({})", dir.display()),
            Outcome::Ran {
                dir,
                reason,
                summary,
            } => {
                println!("tokenize: ran ({reason})");
                for split in Split::ALL {
                    let s = summary.split(split);
                    println!(
                        "tokenize: {split}: {} reviews, {} ({:.1}%) truncated to {} tokens",
                        s.count,
                        s.truncated,
                        100.0 * s.truncated_share,
                        summary.max_len
                    );
                }
                println!("tokenize: wrote {}", dir.display());
            }
        }
        Ok(())
    });
}
