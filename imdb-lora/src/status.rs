//! Every stage of the registry bound to its crate ([`stage`], the one place that ties a
//! [`StageId`] to code), and `imdb-lora status` (`just status`): for every stage, `up to date`
//! or what changed, without running anything (like `dvc status`).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use pipeline::runner::{Outcome, StageInputs};
use pipeline::status::{self, State};
use pipeline::{Config, StageId};

/// A stage's code, as its crate provides it.
#[derive(Clone, Copy)]
pub struct StageCode {
    /// Its command line: parses the arguments (the first is the program name) and runs the
    /// stage, as its own binary does; `imdb-lora <stage>` calls it.
    pub main: fn(Vec<OsString>),
    /// The stage as its command line builds it without options (evaluate: the trained adapter
    /// and the config's model), for `status`.
    pub inputs: fn() -> Box<dyn StageInputs>,
    /// Runs it in-process as its command line does without options; true when it ran, false
    /// when it found itself up to date.
    pub run: fn(&Config) -> Result<bool>,
}

fn ran<S>(outcome: Outcome<S>) -> bool {
    matches!(outcome, Outcome::Ran { .. })
}

/// The code of `stage`. The stages themselves, their names and folders, are declared in
/// `pipeline::graph`; everything that goes through every stage iterates `StageId::ALL` and
/// finds its code here (the compiler checks that every stage has some).
pub fn stage(stage: StageId) -> StageCode {
    match stage {
        StageId::DataPrep => StageCode {
            main: |args| data_prep::cli::main(args),
            inputs: || Box::new(data_prep::DataPrep::default()),
            run: |c| Ok(ran(data_prep::run(c, false)?)),
        },
        StageId::Tokenize => StageCode {
            main: |args| tokenize::cli::main(args),
            inputs: || Box::new(tokenize::Tokenize::default()),
            run: |c| Ok(ran(tokenize::run(c, false)?)),
        },
        StageId::Train => StageCode {
            main: |args| train::cli::main(args),
            inputs: || Box::new(train::Train::default()),
            run: |c| Ok(ran(train::run(c, false)?)),
        },
        StageId::Evaluate => StageCode {
            main: |args| evaluate::cli::main(args),
            inputs: || Box::new(evaluate::Evaluate::new(evaluate::ModelChoice::default())),
            run: |c| {
                Ok(ran(evaluate::run(
                    c,
                    &evaluate::ModelChoice::default(),
                    false,
                )?))
            },
        },
        StageId::Report => StageCode {
            main: |args| report::cli::main(args),
            inputs: || Box::new(report::stage::Report),
            run: |c| Ok(ran(report::stage::run(c, false)?)),
        },
        StageId::Export => StageCode {
            main: |args| export::cli::main(args),
            inputs: || Box::new(export::Export::default()),
            run: |c| Ok(ran(export::run(c, false)?)),
        },
    }
}

/// Say, for every stage, whether it is up to date, and if not what changed: a config key (old
/// → new), an input file, the stage's code, a missing or edited output. Runs nothing and
/// writes nothing.
#[derive(Parser)]
#[command(name = "imdb-lora status", version)]
struct Cli {
    /// The pipeline config file.
    #[arg(long, value_name = "PATH", default_value = "pipeline.yaml")]
    config: PathBuf,
    /// Override one config key, as the stages take it (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Exit with status 3 when some stage is not up to date (for scripts and CI).
    #[arg(long)]
    check: bool,
}

/// The state of every stage for `config`, as the stage binaries would see it (evaluate with
/// the trained adapter and the config's model).
pub fn states(config: &Config) -> Result<Vec<(StageId, State)>> {
    let mut boxed: Vec<Box<dyn StageInputs>> = StageId::ALL
        .into_iter()
        .map(|s| (stage(s).inputs)())
        .collect();
    let mut stages: Vec<&mut dyn StageInputs> = boxed
        .iter_mut()
        .map(|s| s.as_mut() as &mut dyn StageInputs)
        .collect();
    status::status(config, &mut stages)
}

pub fn main(args: impl IntoIterator<Item = OsString>) {
    let args = Cli::parse_from(args);
    let mut all_current = true;
    pipeline::cli::run_stage("status", || {
        let config = Config::load(&args.config, &args.overrides)?;
        let states = states(&config)?;
        all_current = states.iter().all(|(_, s)| s.is_up_to_date());
        print!("{}", status::render(&states));
        Ok(())
    });
    if args.check && !all_current {
        std::process::exit(3);
    }
}
