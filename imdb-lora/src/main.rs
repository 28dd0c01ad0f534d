//! `imdb-lora`: every stage and tool in one executable. `imdb-lora train …` runs exactly what
//! the `train` binary runs (same options, same help), so one file carries the whole pipeline
//! to another machine: the CUDA build links candle's kernels and the libraries once instead of
//! once per stage binary.

mod bench;
mod check_fixture;
mod check_kernels;
mod convert;
mod results;

// The library's modules, where the commands' modules look for them (`crate::models`).
use imdb_lora::{kernel_parity, models, status};

use std::ffi::OsString;

/// The commands, with one line each for `--help`.
const COMMANDS: &[(&str, &str)] = &[
    (
        "data-prep",
        "load IMDb, sample train, split test into test/validation → artifacts/data",
    ),
    (
        "tokenize",
        "tokenize every split to padded tensors → artifacts/tokens",
    ),
    ("train", "fine-tune the model with LoRA → artifacts/train"),
    (
        "evaluate",
        "evaluate on the test split → artifacts/evaluate",
    ),
    (
        "report",
        "figures and the HTML/Markdown report → artifacts/report",
    ),
    (
        "export",
        "the adapter merged into the model, a Hugging Face checkpoint → artifacts/export",
    ),
    ("predict", "classify new texts"),
    (
        "status",
        "for every stage: up to date, or what changed (runs nothing)",
    ),
    ("bench", "training and inference throughput, as JSON lines"),
    (
        "check-kernels",
        "compare this device's kernels with the composed reference ops",
    ),
    (
        "check-fixture",
        "run a transformers + PEFT reference fixture on this device and compare",
    ),
    (
        "results",
        "the README's results and performance tables, from the artifacts and bench output",
    ),
    (
        "convert",
        "copy a checkpoint folder with its weights cast to bf16 or f16",
    ),
];

fn usage() -> String {
    let mut s = format!(
        "imdb-lora {}: LoRA fine-tuning of a transformer for IMDb sentiment\n\n\
         Usage: imdb-lora <COMMAND> [OPTIONS]   (imdb-lora <COMMAND> --help for its options)\n\n\
         Commands:\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, about) in COMMANDS {
        s.push_str(&format!("  {name:<14} {about}\n"));
    }
    s
}

fn main() {
    // Before any thread starts: allocator and thread-pool settings for the CPU kernels.
    lora_classifier::tune_cpu_runtime();
    let mut args = std::env::args_os().skip(1);
    let Some(command) = args.next() else {
        eprint!("{}", usage());
        std::process::exit(2);
    };
    let command = command.to_string_lossy().into_owned();
    // The command's own parser sees "imdb-lora <command>" as its program name.
    let argv = std::iter::once(OsString::from(format!("imdb-lora {command}"))).chain(args);
    match command.as_str() {
        "data-prep" => data_prep::cli::main(argv),
        "tokenize" => tokenize::cli::main(argv),
        "train" => train::cli::main(argv),
        "evaluate" => evaluate::cli::main(argv),
        "report" => report::cli::main(argv),
        "export" => export::cli::main(argv),
        "predict" => evaluate::predict_cli::main(argv),
        "status" => status::main(argv),
        "bench" => bench::main(argv),
        "check-kernels" => check_kernels::main(argv),
        "check-fixture" => check_fixture::main(argv),
        "convert" => convert::main(argv),
        "results" => results::main(argv),
        "-h" | "--help" | "help" => print!("{}", usage()),
        "-V" | "--version" => println!("imdb-lora {}", env!("CARGO_PKG_VERSION")),
        other => {
            eprint!("error: unknown command {other:?}\n\n{}", usage());
            std::process::exit(2);
        }
    }
}
