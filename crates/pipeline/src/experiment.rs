//! Experiments over settings (`imdb-lora exp`, as `dvc exp run -S`): a grid of config
//! assignments expanded into runs, and where each run's stages live.
//!
//! ```text
//! experiments/<name>/
//!   stages/<stage>-<identity>/   an artifacts root holding one stage's folder, with its
//!                                upstream stages' folders linked in (symbolic links)
//!   runs/<run>/                  a run's artifacts root: every stage folder, linked
//!   runs/<run>.json              the run: its assignments and its whole config
//!   .lock                        held by the `exp` in progress
//! ```
//!
//! A stage's identity is its config keys' values (the graph's declaration) and its upstream
//! stages' identities: two runs whose data-prep keys agree share one data-prep folder, so a grid
//! over training settings prepares and tokenizes once, and a grid over `evaluate.threshold`
//! trains once. The stamps inside decide, as for any root, whether a stage is up to date (the
//! code and the inputs count there); a stage killed mid-run resumes in its own root (train from
//! its checkpoints), and a finished run is found up to date, so nothing runs twice.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fs4::{FileExt, TryLockError};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::graph::StageId;
use crate::stamp::hash_bytes;

/// The stages an experiment runs: the chain up to the metrics and the report (export writes a
/// merged model, not a result to compare).
pub const STAGES: [StageId; 5] = [
    StageId::DataPrep,
    StageId::Tokenize,
    StageId::Train,
    StageId::Evaluate,
    StageId::Report,
];

/// The key an experiment sets itself, in every stage's root.
const ARTIFACTS_KEY: &str = "artifacts";

/// One `--grid key=v1,v2,…`: a config key and the values it takes, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl Axis {
    /// Parses `key=v1,v2,…`. Commas inside `[…]` or `{…}` belong to the value, so
    /// `lora.target_modules=[query,value],[query,key,value]` is two lists.
    pub fn parse(arg: &str) -> Result<Axis> {
        let Some((key, values)) = arg.split_once('=') else {
            bail!("--grid {arg}: expected KEY=VALUE1,VALUE2,… (e.g. --grid lora.r=8,16)");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--grid {arg}: the key is empty");
        }
        let mut items = Vec::new();
        let (mut depth, mut start) = (0i32, 0);
        for (i, c) in values.char_indices() {
            match c {
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(values[start..i].trim().to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(values[start..].trim().to_string());
        if depth != 0 {
            bail!("--grid {arg}: unbalanced brackets in the values of `{key}`");
        }
        if items.iter().all(String::is_empty) {
            bail!("--grid {arg}: the grid of `{key}` is empty; give at least one value");
        }
        if items.iter().any(String::is_empty) {
            bail!("--grid {arg}: an empty value in the grid of `{key}` (two commas, or one at an end)");
        }
        Ok(Axis {
            key: key.to_string(),
            values: items,
        })
    }
}

/// Every combination of the axes' values, the first axis varying slowest (as nested loops
/// would), each as `(key, value)` pairs in axis order. No axes: one empty combination.
pub fn expand(axes: &[Axis]) -> Vec<Vec<(String, String)>> {
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for axis in axes {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                axis.values.iter().map(move |v| {
                    let mut next = combo.clone();
                    next.push((axis.key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    combos
}

/// The key of a `--set key=value`.
fn set_key(item: &str) -> &str {
    item.split_once('=').map_or(item, |(k, _)| k).trim()
}

/// A run of an experiment, planned: its assignments, its effective config and its name.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The grid's assignments for this run, as written.
    pub assignments: Vec<(String, String)>,
    /// The config file with the `--set` overrides and the assignments applied.
    pub config: Config,
    /// Its folder name under `runs/`: the assignments, readable, and its identity.
    pub name: String,
}

/// Every run of the grid, each config loaded and checked before anything runs: an unknown
/// key or a value of the wrong type is an error naming the key and the run. A key given twice
/// (in two `--grid`s, or in `--grid` and `--set`) and `artifacts` (which the experiment sets)
/// are refused.
pub fn plan(config_path: &Path, sets: &[String], axes: &[Axis]) -> Result<Vec<PlannedRun>> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let given = sets
        .iter()
        .map(|s| (set_key(s), "--set"))
        .chain(axes.iter().map(|a| (a.key.as_str(), "--grid")));
    for (key, flag) in given {
        if key == ARTIFACTS_KEY {
            bail!(
                "{flag} {ARTIFACTS_KEY}: an experiment puts each run in its own root under \
                 the experiment's folder; pass --dir to move that"
            );
        }
        if let Some(first) = seen.insert(key, flag) {
            bail!("`{key}` is given twice ({first} and {flag}); give each key once");
        }
    }
    let mut runs: Vec<PlannedRun> = Vec::new();
    for assignments in expand(axes) {
        let overrides: Vec<String> = sets
            .iter()
            .cloned()
            .chain(assignments.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let config = Config::load(config_path, &overrides)
            .with_context(|| format!("the run with {}", describe(&assignments)))?;
        let name = run_name(&assignments, &config);
        let same_config = |r: &&PlannedRun| compared_config(&r.config) == compared_config(&config);
        if let Some(same) = runs.iter().find(same_config) {
            bail!(
                "the runs with {} and {} have the same config: a grid value is repeated \
                 (perhaps written two ways, as 5e-4 and 0.0005)",
                describe(&same.assignments),
                describe(&assignments)
            );
        }
        runs.push(PlannedRun {
            assignments,
            config,
            name,
        });
    }
    Ok(runs)
}

/// `key=value, key=value`, or `the base config` for none.
pub fn describe(assignments: &[(String, String)]) -> String {
    if assignments.is_empty() {
        return "the base config".to_string();
    }
    let parts: Vec<String> = assignments
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.join(", ")
}

/// The config as the experiment compares it: every key but `artifacts`.
pub fn compared_config(config: &Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).expect("config serialises");
    if let Some(map) = value.as_object_mut() {
        map.remove(ARTIFACTS_KEY);
    }
    value
}

/// A stage's identity under `config`: its config keys' values and its upstream stages'
/// identities, hashed (hex, 64 digits).
pub fn identity(stage: StageId, config: &Config) -> String {
    let upstream: Vec<String> = stage
        .spec()
        .upstream()
        .into_iter()
        .map(|up| identity(up, config))
        .collect();
    let described = serde_json::json!({
        "stage": stage.recipe(),
        "config": config.sections(stage.config_keys()),
        "upstream": upstream,
    });
    hash_bytes(described.to_string().as_bytes())
}

/// The stages `stage` reads from, directly or through another, in pipeline order.
pub fn upstream_closure(stage: StageId) -> Vec<StageId> {
    let mut all: Vec<StageId> = Vec::new();
    let mut todo = stage.spec().upstream();
    while let Some(up) = todo.pop() {
        if !all.contains(&up) {
            all.push(up);
            todo.extend(up.spec().upstream());
        }
    }
    all.sort();
    all
}

/// `learning_rate=2e-4_r=8-1a2b3c4d`: the assignments' last key segments and values (a list
/// as its items joined by `+`, other characters a file name may not hold dropped or replaced),
/// then the first 8 hex digits of the whole config's identity, which alone tell runs apart
/// ([`known_name`]).
fn run_name(assignments: &[(String, String)], config: &Config) -> String {
    let id = hash_bytes(compared_config(config).to_string().as_bytes());
    let readable: Vec<String> = assignments
        .iter()
        .map(|(k, v)| {
            let short = k.rsplit('.').next().unwrap_or(k);
            let value: String = v
                .chars()
                .filter(|c| !matches!(c, '[' | ']' | '"' | '\'' | ' '))
                .map(|c| if c == ',' { '+' } else { c })
                .collect();
            format!("{short}={value}")
        })
        .collect();
    let mut slug: String = readable
        .join("_")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '=' | '-' | '_' | '+' => c,
            _ => '~',
        })
        .collect();
    if slug.len() > 60 {
        slug.truncate(60);
    }
    if slug.is_empty() {
        slug.push_str("base");
    }
    format!("{slug}-{}", &id[..8])
}

/// The name under which `recorded` (an experiment's [`Experiment::runs`]) already holds the
/// run that `name` names (the same config identity, its last 8 hex digits), or `name` if none
/// does: a run keeps its folder when the readable part of names is spelled differently.
pub fn known_name(recorded: &[RunRecord], name: &str) -> String {
    let id = name.rsplit('-').next().unwrap_or(name);
    recorded
        .iter()
        .find(|r| r.name.rsplit('-').next() == Some(id))
        .map_or_else(|| name.to_string(), |r| r.name.clone())
}

/// What `runs/<run>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub name: String,
    /// The grid's assignments, as written.
    pub assignments: Vec<(String, String)>,
    /// The `--set` overrides every run of its grid had.
    pub sets: Vec<String>,
    /// The whole config but `artifacts` ([`compared_config`]).
    pub config: serde_json::Value,
    /// When its grid was started (seconds since the Unix epoch) and its place in that grid,
    /// for listing runs in the order they were asked for.
    pub started: u64,
    pub index: usize,
}

/// An experiment's folder, held (locked) while an `exp` runs in it.
#[derive(Debug)]
pub struct Experiment {
    dir: PathBuf,
    _lock: Option<fs::File>,
}

const LOCK_FILE: &str = ".lock";
const STAGES_DIR: &str = "stages";
const RUNS_DIR: &str = "runs";

/// An experiment name is one plain folder name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "experiment name {name:?}: expected letters, digits, `-`, `_` or `.` (and not a \
             leading dot)"
        );
    }
    Ok(())
}

impl Experiment {
    /// The experiment `dir`, whether or not it exists, for naming its paths only.
    pub fn at(dir: &Path) -> Experiment {
        Experiment {
            dir: dir.to_path_buf(),
            _lock: None,
        }
    }

    /// The experiment `dir`, for reading (`exp show`).
    pub fn open(dir: &Path) -> Result<Experiment> {
        if !dir.join(RUNS_DIR).is_dir() {
            bail!(
                "{} holds no experiment: run `just exp --grid KEY=V1,V2` first (or pass \
                 --name/--dir of one that ran)",
                dir.display()
            );
        }
        Ok(Experiment {
            dir: dir.to_path_buf(),
            _lock: None,
        })
    }

    /// The experiment `dir`, created if missing, held until dropped: a second `exp` on it
    /// stops with an error instead of racing this one.
    pub fn hold(dir: &Path) -> Result<Experiment> {
        fs::create_dir_all(dir.join(RUNS_DIR))
            .with_context(|| format!("cannot create the experiment folder {}", dir.display()))?;
        fs::create_dir_all(dir.join(STAGES_DIR))?;
        let path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // fs4's flock, named in full: std's inherent File::try_lock needs Rust 1.89.
        match FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "{}: another `exp` is running in this experiment; wait for it, or give this \
                 one another --name",
                dir.display()
            ),
            Err(TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        Ok(Experiment {
            dir: dir.to_path_buf(),
            _lock: Some(lock),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifacts root in which `stage` runs under `config`.
    pub fn stage_root(&self, stage: StageId, config: &Config) -> PathBuf {
        let id = identity(stage, config);
        self.dir
            .join(STAGES_DIR)
            .join(format!("{}-{}", stage.recipe(), &id[..12]))
    }

    /// A run's artifacts root.
    pub fn run_root(&self, name: &str) -> PathBuf {
        self.dir.join(RUNS_DIR).join(name)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(RUNS_DIR).join(format!("{name}.json"))
    }

    /// Makes `stage`'s root under `config` with its upstream stages' folders linked in, and
    /// returns the root.
    pub fn prepare_stage(&self, stage: StageId, config: &Config) -> Result<PathBuf> {
        let root = self.stage_root(stage, config);
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        for up in upstream_closure(stage) {
            let target = self.stage_root(up, config).join(up.dir_name());
            link(&root.join(up.dir_name()), &target)?;
        }
        Ok(root)
    }

    /// Writes the run's record and links each of its stages' folders into its root (the
    /// folders need not exist yet).
    pub fn prepare_run(&self, run: &PlannedRun, record: &RunRecord) -> Result<PathBuf> {
        let root = self.run_root(&run.name);
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        for stage in STAGES {
            let target = self.stage_root(stage, &run.config).join(stage.dir_name());
            link(&root.join(stage.dir_name()), &target)?;
        }
        let path = self.record_path(&run.name);
        // An earlier grid's record of the same run keeps its place in the listing.
        if !path.exists() {
            crate::atomic::write_json(&path, record)?;
        }
        Ok(root)
    }

    /// Every run recorded, in the order they were asked for.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        let dir = self.dir.join(RUNS_DIR);
        let mut runs = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let record: RunRecord = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a run record", path.display()))?;
                runs.push(record);
            }
        }
        runs.sort_by(|a, b| (a.started, a.index, &a.name).cmp(&(b.started, b.index, &b.name)));
        Ok(runs)
    }
}

/// Makes `at` a symbolic link to `target` (relative, so the experiment folder can move), or
/// leaves it if it already is one; anything else at `at` is an error.
fn link(at: &Path, target: &Path) -> Result<()> {
    let relative = relative_to(target, at.parent().expect("a link has a parent"));
    match fs::symlink_metadata(at) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(at)? == relative {
                return Ok(());
            }
            fs::remove_file(at).with_context(|| format!("cannot replace {}", at.display()))?;
        }
        Ok(_) => bail!(
            "{} is not a link into the experiment's stages: the experiment folder was \
             changed by hand; move it away",
            at.display()
        ),
        Err(_) => {}
    }
    symlink(&relative, at).with_context(|| format!("cannot link {}", at.display()))
}

#[cfg(unix)]
fn symlink(target: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(windows)]
fn symlink(target: &Path, at: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, at)
}

/// `target` as seen from the folder `from`, both under one experiment folder.
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for part in &t[common..] {
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests;
