//! `imdb-lora`: every stage and tool in one executable, the pipeline's front door.
//! `imdb-lora train …` runs exactly what the `train` binary (a thin alias) runs (same options,
//! same help), so one file carries the whole pipeline to another machine: the CUDA build links
//! candle's kernels and the libraries once instead of once per stage binary. The stages, their
//! help lines and their order come from the registry (`pipeline::graph`), their code from
//! [`imdb_lora::status::stage`]; the tools are listed here.

mod bench;
mod check_fixture;
mod check_kernels;
mod convert;
mod results;

// The library's modules, where the commands' modules look for them (`crate::models`).
use imdb_lora::{kernel_parity, models, status};

use std::ffi::OsString;

use pipeline::StageId;

/// A command that is not a stage.
struct Tool {
    name: &'static str,
    /// Its line in `--help`.
    about: &'static str,
    /// Parses the arguments (the first is the program name) and runs it.
    main: fn(Vec<OsString>),
}

/// The tools (the stages come from the registry, `pipeline::graph`).
const TOOLS: &[Tool] = &[
    Tool {
        name: "predict",
        about: "classify new texts",
        main: |a| evaluate::predict_cli::main(a),
    },
    Tool {
        name: "exp",
        about: "experiments over settings: `exp run --grid KEY=V1,V2`, `exp show`",
        main: |a| imdb_lora::exp::main(a),
    },
    Tool {
        name: "status",
        about: "for every stage: up to date, or what changed (runs nothing)",
        main: |a| status::main(a),
    },
    Tool {
        name: "bench",
        about: "training and inference throughput, as JSON lines",
        main: |a| bench::main(a.into_iter()),
    },
    Tool {
        name: "check-kernels",
        about: "compare this device's kernels with the composed reference ops",
        main: |a| check_kernels::main(a.into_iter()),
    },
    Tool {
        name: "check-fixture",
        about: "run a transformers + PEFT reference fixture on this device and compare",
        main: |a| check_fixture::main(a.into_iter()),
    },
    Tool {
        name: "results",
        about: "the README's results and performance tables, from the artifacts and bench output",
        main: |a| results::main(a.into_iter()),
    },
    Tool {
        name: "convert",
        about: "copy a checkpoint folder with its weights cast to bf16 or f16",
        main: |a| convert::main(a.into_iter()),
    },
];

/// `imdb-lora stages`, left out of the usage: the stages in pipeline order, one `<name>
/// <folder>` line each, for scripts (the justfile's `all` and `smoke`) to run them by.
const STAGES_COMMAND: &str = "stages";

fn usage() -> String {
    let mut s = format!(
        "imdb-lora {}: LoRA fine-tuning of a transformer for IMDb sentiment\n\n\
         Usage: imdb-lora <COMMAND> [OPTIONS]   (imdb-lora <COMMAND> --help for its options)\n\n\
         Commands:\n",
        env!("CARGO_PKG_VERSION")
    );
    for stage in StageId::ALL {
        let spec = stage.spec();
        let about = format!("{} → artifacts/{}", spec.about, spec.dir);
        s.push_str(&format!("  {:<14} {about}\n", spec.recipe));
    }
    for tool in TOOLS {
        s.push_str(&format!("  {:<14} {}\n", tool.name, tool.about));
    }
    s
}

fn stages(args: &[OsString]) {
    if args.is_empty() {
        for stage in StageId::ALL {
            println!("{} {}", stage.recipe(), stage.dir_name());
        }
    } else if args.len() == 1 && (args[0] == "-h" || args[0] == "--help") {
        println!(
            "Usage: imdb-lora {STAGES_COMMAND}\n\n\
             The stages in pipeline order, one `<name> <folder>` line each."
        );
    } else {
        eprintln!("error: imdb-lora {STAGES_COMMAND} takes no arguments");
        std::process::exit(2);
    }
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
    let program = OsString::from(format!("imdb-lora {command}"));
    let argv: Vec<OsString> = std::iter::once(program).chain(args).collect();
    if let Some(stage) = StageId::from_recipe(&command) {
        (status::stage(stage).main)(argv);
    } else if let Some(tool) = TOOLS.iter().find(|t| t.name == command) {
        (tool.main)(argv);
    } else {
        match command.as_str() {
            STAGES_COMMAND => stages(&argv[1..]),
            "-h" | "--help" | "help" => print!("{}", usage()),
            "-V" | "--version" => println!("imdb-lora {}", env!("CARGO_PKG_VERSION")),
            other => {
                eprint!("error: unknown command {other:?}\n\n{}", usage());
                std::process::exit(2);
            }
        }
    }
}
