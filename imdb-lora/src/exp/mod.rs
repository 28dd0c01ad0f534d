//! `imdb-lora exp` (`just exp`): experiments over settings, as `dvc exp run -S` runs them.
//! `exp run --grid KEY=V1,V2 …` runs every combination, each run in its own artifacts root
//! under `experiments/<name>/runs/`, every stage in a root of its own identity so that runs
//! share what they have in common (`pipeline::experiment`); `exp show` compares the runs.

mod show;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pipeline::experiment::{self, Axis, Experiment, PlannedRun, RunRecord, STAGES};
use pipeline::{Config, StageId};

pub use show::{show, ShowFormat, Table};

#[derive(Parser)]
#[command(
    name = "imdb-lora exp",
    version,
    about = "Experiments over settings: run a grid of configs, compare the runs",
    after_help = "Example:\n  imdb-lora exp run --grid training.learning_rate=2e-4,5e-4 --grid lora.r=8,16 \
                  --set model.truncation=head_tail\n  imdb-lora exp show --format md"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where an experiment lives.
#[derive(Debug, Clone, clap::Args)]
pub struct Place {
    /// The experiment's name: its folder under --dir. Runs of several `exp run`s under one
    /// name are compared together.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The folder of every experiment.
    #[arg(long, value_name = "DIR", default_value = "experiments")]
    pub dir: PathBuf,
}

impl Place {
    pub fn path(&self) -> Result<PathBuf> {
        experiment::check_name(&self.name)?;
        Ok(self.dir.join(&self.name))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run every combination of the --grid values (data-prep → report), skipping what is done.
    Run(RunArgs),
    /// One table of the runs (the settings that differ, validation and test metrics, time) and
    /// a figure of their curves.
    Show(show::ShowArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The pipeline config file every run starts from.
    #[arg(long, value_name = "PATH", default_value = "pipeline.yaml")]
    pub config: PathBuf,
    /// A config key and the values it takes, comma-separated (commas inside [..] belong to
    /// the value); repeat for more keys: every combination runs.
    #[arg(long = "grid", value_name = "KEY=V1,V2,…")]
    pub grid: Vec<String>,
    /// Override one config key in every run (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub place: Place,
    /// The most runs a grid may have without --yes.
    #[arg(long, default_value_t = 12)]
    pub max_runs: usize,
    /// Run a grid larger than --max-runs.
    #[arg(long)]
    pub yes: bool,
    /// List the runs and the stages each would share, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What ran a stage (the stages' own code; tests put a failure in its way).
pub type StageRunner<'a> = dyn FnMut(StageId, &Config) -> Result<bool> + 'a;

/// The grid, checked: every run's config loaded before anything runs.
pub fn plan(args: &RunArgs) -> Result<Vec<PlannedRun>> {
    let axes = args
        .grid
        .iter()
        .map(|g| Axis::parse(g))
        .collect::<Result<Vec<_>>>()?;
    let runs = experiment::plan(&args.config, &args.sets, &axes)?;
    if runs.len() > args.max_runs && !args.yes {
        bail!(
            "the grid has {} runs, more than --max-runs {}: pass --yes to run them all, or \
             fewer values",
            runs.len(),
            args.max_runs
        );
    }
    Ok(runs)
}

/// Runs the grid of `args`, each stage through `run_stage`, reporting to `out`.
pub fn run(args: &RunArgs, run_stage: &mut StageRunner, out: &mut dyn Write) -> Result<()> {
    let runs = plan(args)?;
    let dir = args.place.path()?;
    if args.dry_run {
        return dry_run(&dir, &runs, out);
    }
    let exp = Experiment::hold(&dir)?;
    // A run recorded by an earlier `exp run` keeps its folder (and its place in `exp show`).
    let recorded = exp.runs()?;
    let mut runs = runs;
    for run in &mut runs {
        run.name = experiment::known_name(&recorded, &run.name);
    }
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        out,
        "experiment {}: {} run{}",
        exp.dir().display(),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    )?;
    // The stage roots this grid has brought up to date: a later run finds them shared.
    let mut done: Vec<PathBuf> = Vec::new();
    for (index, planned) in runs.iter().enumerate() {
        let record = RunRecord {
            name: planned.name.clone(),
            assignments: planned.assignments.clone(),
            sets: args.sets.clone(),
            config: experiment::compared_config(&planned.config),
            started,
            index,
        };
        let root = exp.prepare_run(planned, &record)?;
        writeln!(
            out,
            "run {}/{}: {} → {}",
            index + 1,
            runs.len(),
            experiment::describe(&planned.assignments),
            root.display()
        )?;
        for stage in STAGES {
            let stage_root = exp.prepare_stage(stage, &planned.config)?;
            if done.contains(&stage_root) {
                writeln!(out, "  {:<10} shared with an earlier run", stage.recipe())?;
                continue;
            }
            let mut config = planned.config.clone();
            config.artifacts = stage_root.clone();
            let clock = Instant::now();
            let ran = run_stage(stage, &config).with_context(|| {
                format!(
                    "run {}/{} ({}), stage {stage}; run the same command again to resume",
                    index + 1,
                    runs.len(),
                    experiment::describe(&planned.assignments)
                )
            })?;
            let what = if ran {
                format!("ran in {:.1} s", clock.elapsed().as_secs_f64())
            } else {
                "up to date".to_string()
            };
            writeln!(out, "  {:<10} {what}", stage.recipe())?;
            out.flush()?;
            done.push(stage_root);
        }
    }
    writeln!(
        out,
        "done: `imdb-lora exp show --name {}` compares the runs",
        args.place.name
    )?;
    Ok(())
}

fn dry_run(dir: &Path, runs: &[PlannedRun], out: &mut dyn Write) -> Result<()> {
    let exp = Experiment::at(dir);
    let mut seen: Vec<PathBuf> = Vec::new();
    for (i, planned) in runs.iter().enumerate() {
        writeln!(
            out,
            "run {}/{}: {}",
            i + 1,
            runs.len(),
            experiment::describe(&planned.assignments)
        )?;
        for stage in STAGES {
            let root = exp.stage_root(stage, &planned.config);
            let state = if seen.contains(&root) {
                "shared with an earlier run"
            } else if root.join(stage.dir_name()).exists() {
                "exists (its stamp decides whether it reruns)"
            } else {
                "new"
            };
            writeln!(out, "  {:<10} {state}", stage.recipe())?;
            seen.push(root);
        }
    }
    Ok(())
}

/// The stages' own code, as `imdb-lora <stage>` runs it with no options.
pub fn stage_code(stage: StageId, config: &Config) -> Result<bool> {
    (crate::status::stage(stage).run)(config)
}

/// `imdb-lora exp …`: parses `args` (the first is the program name) and runs it.
pub fn main(args: impl IntoIterator<Item = OsString>) {
    let cli = Cli::parse_from(args);
    pipeline::cli::run_stage("exp", || match &cli.command {
        Command::Run(args) => run(args, &mut stage_code, &mut std::io::stdout().lock()),
        Command::Show(args) => show::main(args),
    });
}
