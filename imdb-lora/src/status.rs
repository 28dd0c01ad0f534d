//! `imdb-lora status` (`just status`): for every stage, `up to date` or what changed, without
//! running anything (like `dvc status`).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use pipeline::runner::StageInputs;
use pipeline::status::{self, State};
use pipeline::{Config, StageId};

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
    let mut data_prep = data_prep::DataPrep::default();
    let mut tokenize = tokenize::Tokenize::default();
    let mut train = train::Train::default();
    let mut evaluate = evaluate::Evaluate::new(evaluate::ModelChoice::default());
    let mut report = report::stage::Report;
    let mut export = export::Export::default();
    let mut stages: [&mut dyn StageInputs; 6] = [
        &mut data_prep,
        &mut tokenize,
        &mut train,
        &mut evaluate,
        &mut report,
        &mut export,
    ];
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
