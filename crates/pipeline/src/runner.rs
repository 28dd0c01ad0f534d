//! The one stage runner. A stage says where its sources are and what it resolved at run time,
//! and does its own work ([`Stage`]); everything else is here, for every stage alike: the
//! artifacts root's safety and lock, the upstream checks, the hashes of the upstream files and
//! of the sources the graph declares, the stamp comparison, the staging folder, the check that
//! the outputs are the declared ones, the stamp, the commit, and one [`Outcome`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::atomic::StagingDir;
use crate::config::Config;
use crate::graph::{Read, StageId};
use crate::layout::Layout;
use crate::root::{check_stage_dir, HeldRoot};
use crate::sources::SourceFiles;
use crate::stamp::{self, Change, StageRun};
use crate::upstream::verify_current;

/// What a stage sees of a run.
pub struct Context<'a> {
    pub config: &'a Config,
    pub layout: Layout,
}

impl<'a> Context<'a> {
    pub fn new(config: &'a Config) -> Self {
        Self {
            config,
            layout: Layout::new(&config.artifacts),
        }
    }

    /// The path of an upstream artifact.
    pub fn artifact(&self, stage: StageId, file: &str) -> PathBuf {
        self.layout.stage_dir(stage).join(file)
    }
}

/// What a stage takes from outside the artifacts, as it gives it: where each source the graph
/// declares for it is (one [`SourceFiles`] per source; the runner hashes them), and what it
/// resolved at run time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    pub sources: Vec<SourceFiles>,
    pub runtime: BTreeMap<String, String>,
}

/// What the runner records of a stage's inputs: each source file's stamp name (under its
/// source's prefix) → sha256, and the runtime the stage gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    pub sources: BTreeMap<String, String>,
    pub runtime: BTreeMap<String, String>,
}

/// What a stage records besides what the graph declares; all `just status` needs of a stage.
pub trait StageInputs {
    fn id(&self) -> StageId;

    /// The source identity of the stage's code: `env!("STAGE_IDENTITY")`, set by its build
    /// script (`source-identity`).
    fn code(&self) -> &'static str;

    /// Says where its declared sources are (not their hashes: the runner takes those) and
    /// resolves its runtime (device, dtype). No side effects, and cheap beside the work.
    fn inputs(&mut self, ctx: &Context) -> Result<Inputs>;

    /// A file that stands in for an upstream artifact (evaluate's `--adapter DIR`): recorded
    /// under the artifact's name, with no upstream check.
    fn replacement(&self, _read: &Read) -> Option<PathBuf> {
        None
    }
}

/// A stage's own work.
pub trait Stage: StageInputs {
    /// What a run reports.
    type Summary;

    /// Writes the stage's declared outputs into `out` (a staging folder, swapped in only
    /// when the run succeeds). `inputs` is what the runner recorded of what
    /// [`StageInputs::inputs`] gave.
    fn run(&mut self, ctx: &Context, inputs: &Recorded, out: &Path) -> Result<Self::Summary>;

    /// The lines printed after a run, each without the stage's name.
    fn describe(&self, summary: &Self::Summary) -> Vec<String>;

    /// After the outputs are in place (train removes its checkpoints).
    fn committed(&mut self, _ctx: &Context) -> Result<()> {
        Ok(())
    }
}

/// What a run of a stage did.
#[derive(Debug)]
pub enum Outcome<S> {
    /// The outputs in `dir` match the config, the inputs and the code: nothing done.
    UpToDate { dir: PathBuf },
    Ran {
        dir: PathBuf,
        /// Why it ran: what changed, or `--force`.
        reason: String,
        summary: S,
    },
}

/// What `stage` would record now. With `verify`, upstream stages must be current (else an
/// error naming the recipe to run) and their files present; without, what is there is hashed
/// and the rest left out (`status` reports upstream stages itself).
pub fn planned_run(
    stage: &mut dyn StageInputs,
    ctx: &Context,
    verify: bool,
) -> Result<(StageRun, Recorded)> {
    let id = stage.id();
    let spec = id.spec();
    let config = ctx.config;
    let mut run = StageRun::new(&ctx.layout, id, config, stage.code());
    let mut verified = Vec::new();
    for read in spec.reads_for(config) {
        let name = format!("{}/{}", read.stage.dir_name(), read.file);
        if let Some(path) = stage.replacement(&read) {
            run.input_file(&name, &path)?;
            continue;
        }
        if verify && !verified.contains(&read.stage) {
            verify_current(&ctx.layout, config, read.stage)?;
            verified.push(read.stage);
        }
        let path = ctx.artifact(read.stage, read.file);
        if verify && !path.exists() {
            bail!(
                "{} is missing: run `just {}` first",
                path.display(),
                read.stage.recipe()
            );
        }
        if path.exists() {
            run.input_file(&name, &path)?;
        }
        run.reads_from(read.stage);
    }
    let Inputs { sources, runtime } = stage.inputs(ctx)?;
    let recorded = Recorded {
        sources: hash_sources(id, &sources)?,
        runtime,
    };
    let runtime: Vec<&str> = recorded.runtime.keys().map(String::as_str).collect();
    if runtime != spec.runtime {
        bail!(
            "{id}: records runtime {runtime:?}, the graph declares {:?}",
            spec.runtime
        );
    }
    for (name, hash) in &recorded.sources {
        run.input_hash(name, hash.clone());
    }
    for (what, value) in &recorded.runtime {
        run.runtime(what, value);
    }
    if verify {
        check_shared_sources(stage, ctx, &recorded)?;
    }
    Ok((run, recorded))
}

/// The hashes of the sources stage `id` gave, by stamp name, once they are checked to be
/// exactly those the graph declares for it: the graph says what a stage depends on, the stage
/// only where it is.
fn hash_sources(id: StageId, given: &[SourceFiles]) -> Result<BTreeMap<String, String>> {
    const GRAPH: &str = "the pipeline graph (pipeline/src/graph.rs)";
    let declared = id.spec().sources;
    for (i, files) in given.iter().enumerate() {
        let source = files.source();
        if !declared.contains(&source) {
            bail!(
                "{id} gives {} (`{}`), a source {GRAPH} does not declare for it",
                source.describe(),
                source.prefix()
            );
        }
        if given[..i].iter().any(|f| f.source() == source) {
            bail!("{id} gives {} twice", source.describe());
        }
    }
    for source in declared {
        if !given.iter().any(|f| f.source() == *source) {
            bail!(
                "{id} does not say where {} (`{}`) is, a source {GRAPH} declares for it",
                source.describe(),
                source.prefix()
            );
        }
    }
    let mut hashes = BTreeMap::new();
    for files in given {
        hashes.extend(files.hashes()?);
    }
    Ok(hashes)
}

/// A source this stage and an upstream stage it reads both use (the model, for evaluate and
/// train) must be the same now as when the upstream stage ran: its outputs were made from it.
fn check_shared_sources(stage: &dyn StageInputs, ctx: &Context, inputs: &Recorded) -> Result<()> {
    let spec = stage.id().spec();
    for read in spec.reads_for(ctx.config) {
        let upstream = read.stage.spec();
        if stage.replacement(&read).is_some() {
            continue;
        }
        let Some(stamp) = stamp::read_stamp(&ctx.layout.stage_dir(read.stage))? else {
            continue;
        };
        for source in spec.sources.iter().filter(|s| upstream.sources.contains(s)) {
            for (name, hash) in stamp.inputs_under(source.prefix()) {
                if inputs.sources.get(name).map(String::as_str) != Some(hash) {
                    bail!(
                        "{name} changed since `{}` ran: its outputs were made from other \
                         files; run `just {}` first",
                        read.stage,
                        read.stage.recipe()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs `stage` unless its outputs are up to date (or `force`): the one execute path.
pub fn execute<S: Stage>(
    stage: &mut S,
    config: &Config,
    force: bool,
) -> Result<Outcome<S::Summary>> {
    let id = stage.id();
    let ctx = Context::new(config);
    let held = HeldRoot::acquire(ctx.layout.root(), id.recipe())?;
    let dir = ctx.layout.stage_dir(id);
    let (run, inputs) = planned_run(stage, &ctx, true)?;
    let changes = run.changes()?;
    if changes.is_empty() && !force {
        return Ok(Outcome::UpToDate { dir });
    }
    let reason = if changes.is_empty() {
        "--force".to_string()
    } else {
        describe_changes(&changes)
    };
    // A root this run may only read (read-only, another user's) serves stages that are up to
    // date; one that must run says why it cannot.
    held.writable()
        .with_context(|| format!("{reason}: {id} must run and write its outputs"))?;
    // Before the work, which may take a while: why it runs.
    eprintln!("{id}: {reason}: running");
    let staged = StagingDir::new(&dir)?;
    let summary = stage.run(&ctx, &inputs, staged.path())?;
    check_outputs(id, config, staged.path())?;
    run.write_stamp(staged.path())?;
    // Again just before replacing it: a folder made meanwhile is not ours to delete.
    check_stage_dir(&dir, id)?;
    let dir = staged.commit()?;
    stage.committed(&ctx)?;
    Ok(Outcome::Ran {
        dir,
        reason,
        summary,
    })
}

/// The staged folder holds exactly the outputs the graph declares for this config.
fn check_outputs(id: StageId, config: &Config, dir: &Path) -> Result<()> {
    let written = stamp::hash_outputs(dir)?;
    let declared = id.spec().writes_for(config);
    for file in written.keys() {
        if !declared.iter().any(|w| w.matches(file)) {
            bail!("{id} wrote {file}, which the pipeline graph (pipeline/src/graph.rs) does not declare");
        }
    }
    for w in &declared {
        if !written.keys().any(|f| w.matches(f)) {
            bail!(
                "{id} did not write {}, which the pipeline graph (pipeline/src/graph.rs) declares",
                w.file
            );
        }
    }
    Ok(())
}

/// A stage's reason to run, in one line: what changed (all of it), or `--force`.
pub fn describe_changes(changes: &[Change]) -> String {
    let why: Vec<String> = changes.iter().map(Change::to_string).collect();
    why.join("; ")
}

/// The outcome as the stage binaries print it (why it ran went to stderr when it started).
pub fn report<S: Stage>(stage: &S, outcome: &Outcome<S::Summary>) -> String {
    let name = stage.id().recipe();
    match outcome {
        Outcome::UpToDate { dir } => format!("{name}: up to date ({})\n", dir.display()),
        Outcome::Ran { dir, summary, .. } => {
            let mut out = String::new();
            for line in stage.describe(summary) {
                out.push_str(&format!("{name}: {line}\n"));
            }
            out.push_str(&format!("{name}: wrote {}\n", dir.display()));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Content;

    /// A stage that gives `sources`, and nothing else.
    struct Giving {
        id: StageId,
        sources: Vec<SourceFiles>,
    }

    impl StageInputs for Giving {
        fn id(&self) -> StageId {
            self.id
        }

        fn code(&self) -> &'static str {
            "test"
        }

        fn inputs(&mut self, _: &Context) -> Result<Inputs> {
            Ok(Inputs {
                sources: self.sources.clone(),
                ..Inputs::default()
            })
        }
    }

    fn planned(id: StageId, sources: Vec<SourceFiles>) -> Result<Recorded> {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            artifacts: tmp.path().join("artifacts"),
            ..Config::default()
        };
        let mut stage = Giving { id, sources };
        planned_run(&mut stage, &Context::new(&config), false).map(|(_, recorded)| recorded)
    }

    /// The graph decides what a stage depends on: a stage giving a source it does not declare,
    /// or leaving out one it does, is refused before anything is hashed, naming both.
    #[test]
    fn a_stage_gives_exactly_the_sources_the_graph_declares() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (file, text) in [
            ("config.json", "{}"),
            ("model.safetensors", "w"),
            ("tokenizer.json", "t"),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        let model = || SourceFiles::model(dir).unwrap();
        let tokenizer = || SourceFiles::tokenizer(dir).unwrap();
        // Not hashed: a refused source's files need not exist.
        let dataset = SourceFiles::dataset(vec![(
            "archive".into(),
            Content::File(dir.join("no-such-file")),
        )]);

        let err = planned(StageId::DataPrep, vec![dataset.clone(), model()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data-prep gives the model's config and weights (`model/`)")
                && err.contains("does not declare for it"),
            "{err}"
        );
        let err = planned(StageId::Export, vec![model()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("export does not say where the model's tokenizer.json (`tokenizer/`)")
                && err.contains("declares for it"),
            "{err}"
        );
        let err = planned(StageId::Tokenize, vec![tokenizer(), tokenizer()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenize gives the model's tokenizer.json twice"),
            "{err}"
        );
        let err = planned(StageId::Report, vec![dataset])
            .unwrap_err()
            .to_string();
        assert!(err.contains("report gives the dataset"), "{err}");

        // Exactly the declared ones: hashed under each source's prefix.
        let recorded = planned(StageId::Export, vec![tokenizer(), model()]).unwrap();
        let names: Vec<&str> = recorded.sources.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "model/config.json",
                "model/model.safetensors",
                "tokenizer/tokenizer.json"
            ]
        );
    }
}
