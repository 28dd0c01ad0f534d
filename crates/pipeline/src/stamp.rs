//! Stage stamps: what a stage's outputs were made from.
//!
//! Each stage writes `stamp.json` into its output folder, recording the source identity of
//! the stage's code, the config keys it reads, what it resolved at run time (device, dtype),
//! the content hashes of its inputs, its upstream stages and the hashes of its outputs. A
//! stage whose stamp still matches does no work; what differs is listed as [`Change`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::layout::{Layout, StageId};

pub const STAMP_FILE: &str = "stamp.json";

/// Bumped when the stamp's or an artifact's format changes, so that old artifacts are
/// rebuilt (their stages' code identity changes too; this also tells the stages after them).
pub const ARTIFACT_FORMAT: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub stage: String,
    /// The source identity of the stage's code (see the `source-identity` crate).
    pub code: String,
    pub artifact_format: u32,
    /// The config keys this stage reads, with their values.
    pub config: Value,
    /// What the stage resolved at run time that decides its outputs (device, dtype).
    pub runtime: BTreeMap<String, String>,
    /// Input name → sha256 of its content.
    pub inputs: BTreeMap<String, String>,
    /// Output path (relative to the stage folder) → sha256.
    pub outputs: BTreeMap<String, String>,
    /// Stages whose outputs this one read.
    pub upstream: Vec<String>,
}

impl Stamp {
    /// Parses a stamp file's text and checks what the freshness checks rely on; `path` names
    /// the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Stamp> {
        let stamp: Stamp = serde_json::from_str(text)
            .with_context(|| format!("{} is not a valid stamp", path.display()))?;
        stamp
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(stamp)
    }

    /// Outputs are files inside the stage folder (a stamp with none vouches for nothing), and
    /// upstream stages are stages of this pipeline.
    fn check(&self) -> Result<()> {
        if self.outputs.is_empty() {
            bail!("lists no outputs");
        }
        for rel in self.outputs.keys() {
            let inside = !rel.is_empty()
                && Path::new(rel)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !inside {
                bail!("output {rel:?} is not a relative path inside the stage folder");
            }
        }
        for up in &self.upstream {
            if StageId::from_recipe(up).is_none() {
                bail!("unknown upstream stage {up:?}");
            }
        }
        Ok(())
    }

    /// The first output that is missing from `dir` or changed since the stamp was written.
    pub fn damage(&self, dir: &Path) -> Result<Option<String>> {
        for (rel, hash) in &self.outputs {
            let path = dir.join(rel);
            if !path.exists() {
                return Ok(Some(format!("{} is missing", path.display())));
            }
            if &hash_file(&path)? != hash {
                return Ok(Some(format!("{} was modified", path.display())));
            }
        }
        Ok(None)
    }

    /// Its inputs under `prefix` (one source's files).
    pub fn inputs_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.inputs
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Which stage wrote the folder `dir`, from its stamp read leniently (any JSON object with a
/// `stage`): the one test of whether a folder may be replaced. `None` when there is no stamp
/// or it names no stage.
pub fn owner(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(STAMP_FILE)).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    value.get("stage")?.as_str().map(String::from)
}

/// One difference between a stage's stamp and what a run would record now.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// No stamp: the stage never ran here (or its folder is gone).
    NeverRan,
    /// The stamp cannot be read or trusted.
    BadStamp(String),
    /// The stage's code (or a library or dependency version it links) changed.
    Code,
    /// Written in another artifact format.
    Format,
    /// A config key: its old and new value (`None`: not recorded).
    Key {
        key: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    /// A runtime fact (device, dtype).
    Runtime {
        what: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// An input file: added, removed or changed content.
    Input { name: String, how: &'static str },
    /// An output is missing or was modified.
    Output(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<Value>| v.as_ref().map_or("(none)".into(), |v| v.to_string());
        match self {
            Change::NeverRan => f.write_str("no previous run"),
            Change::BadStamp(why) => f.write_str(why),
            Change::Code => f.write_str("the stage's code changed"),
            Change::Format => f.write_str("written in another artifact format"),
            Change::Key { key, old, new } => {
                write!(f, "config changed: {key}: {} → {}", shown(old), shown(new))
            }
            Change::Runtime { what, old, new } => write!(
                f,
                "{what} changed: {} → {}",
                old.as_deref().unwrap_or("(none)"),
                new.as_deref().unwrap_or("(none)")
            ),
            Change::Input { name, how } => write!(f, "input {name} {how}"),
            Change::Output(damage) => f.write_str(damage),
        }
    }
}

/// Whether a stage must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    UpToDate,
    /// Why it must run.
    Stale(String),
}

/// sha256 of a file's content, hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub fn hash_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every file under `dir` but the stamp, by relative path (`/`-separated), hashed.
pub fn hash_outputs(dir: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).expect("below the base");
                let rel: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
                let rel = rel.join("/");
                if rel != STAMP_FILE {
                    out.insert(rel, hash_file(&path)?);
                }
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// What a stage records about a run: its identity, config and hashed inputs.
pub struct StageRun {
    pub id: StageId,
    pub dir: PathBuf,
    code: String,
    config: Value,
    runtime: BTreeMap<String, String>,
    inputs: BTreeMap<String, String>,
    upstream: Vec<StageId>,
}

impl StageRun {
    /// A run of stage `id` whose code has the source identity `code`.
    pub fn new(layout: &Layout, id: StageId, config: &Config, code: &str) -> Self {
        Self {
            id,
            dir: layout.stage_dir(id),
            code: code.to_string(),
            config: config.sections(id.config_keys()),
            runtime: BTreeMap::new(),
            inputs: BTreeMap::new(),
            upstream: Vec::new(),
        }
    }

    /// Records an input file by a stable name (not its path, which differs between machines
    /// and caches).
    pub fn input_file(&mut self, name: &str, path: &Path) -> Result<()> {
        let hash = hash_file(path).with_context(|| format!("hashing input {name}"))?;
        self.inputs.insert(name.to_string(), hash);
        Ok(())
    }

    /// Records an input that is not a file (e.g. the content hash of a folder).
    pub fn input_hash(&mut self, name: &str, hash: String) {
        self.inputs.insert(name.to_string(), hash);
    }

    /// Records a runtime fact.
    pub fn runtime(&mut self, what: &str, value: &str) {
        self.runtime.insert(what.to_string(), value.to_string());
    }

    /// Records that the run reads `stage`'s outputs.
    pub fn reads_from(&mut self, stage: StageId) {
        if !self.upstream.contains(&stage) {
            self.upstream.push(stage);
        }
    }

    /// Checks that `upstream` is complete and current, then records each of `files` (paths
    /// relative to the upstream folder) as an input named `<folder>/<file>`.
    pub fn upstream(
        &mut self,
        layout: &Layout,
        config: &Config,
        upstream: StageId,
        files: &[&str],
    ) -> Result<()> {
        crate::upstream::verify_current(layout, config, upstream)?;
        let dir = layout.stage_dir(upstream);
        for file in files {
            let path = dir.join(file);
            if !path.exists() {
                bail!(
                    "{} is missing: run `just {}` first",
                    path.display(),
                    upstream.recipe()
                );
            }
            self.input_file(&format!("{}/{file}", upstream.dir_name()), &path)?;
        }
        self.reads_from(upstream);
        Ok(())
    }

    /// The stamp this run writes, with these outputs.
    pub fn stamp_with(&self, outputs: BTreeMap<String, String>) -> Stamp {
        Stamp {
            stage: self.id.recipe().to_string(),
            code: self.code.clone(),
            artifact_format: ARTIFACT_FORMAT,
            config: self.config.clone(),
            runtime: self.runtime.clone(),
            inputs: self.inputs.clone(),
            outputs,
            upstream: self
                .upstream
                .iter()
                .map(|s| s.recipe().to_string())
                .collect(),
        }
    }

    /// Everything that differs between the stamp on disk and what this run would record;
    /// empty when the stage is up to date.
    pub fn changes(&self) -> Result<Vec<Change>> {
        // A stamp that cannot be trusted is no stamp: the stage reruns and writes a good one.
        let stamp = match read_stamp(&self.dir) {
            Ok(Some(stamp)) => stamp,
            Ok(None) => return Ok(vec![Change::NeverRan]),
            Err(err) => return Ok(vec![Change::BadStamp(format!("{err:#}"))]),
        };
        let expected = self.stamp_with(BTreeMap::new());
        let mut changes = Vec::new();
        if stamp.artifact_format != expected.artifact_format {
            changes.push(Change::Format);
        }
        if stamp.code != expected.code {
            changes.push(Change::Code);
        }
        changes.extend(key_changes(&stamp.config, &expected.config));
        let whats: BTreeSet<&String> = stamp
            .runtime
            .keys()
            .chain(expected.runtime.keys())
            .collect();
        for what in whats {
            let (old, new) = (stamp.runtime.get(what), expected.runtime.get(what));
            if old != new {
                changes.push(Change::Runtime {
                    what: what.clone(),
                    old: old.cloned(),
                    new: new.cloned(),
                });
            }
        }
        let names: BTreeSet<&String> = stamp.inputs.keys().chain(expected.inputs.keys()).collect();
        for name in names {
            let how = match (stamp.inputs.get(name), expected.inputs.get(name)) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(_), Some(_)) => "changed",
                (None, _) => "is new",
                (_, None) => "is no longer read",
            };
            changes.push(Change::Input {
                name: name.clone(),
                how,
            });
        }
        if let Some(damage) = stamp.damage(&self.dir)? {
            changes.push(Change::Output(damage));
        }
        Ok(changes)
    }

    /// Compares the stamp on disk with what this run would record.
    pub fn freshness(&self) -> Result<Freshness> {
        let changes = self.changes()?;
        if changes.is_empty() {
            return Ok(Freshness::UpToDate);
        }
        let why: Vec<String> = changes.iter().map(ToString::to_string).collect();
        Ok(Freshness::Stale(why.join("; ")))
    }

    /// Writes the stamp into the staged output folder, hashing what is there.
    pub fn write_stamp(&self, staged_dir: &Path) -> Result<()> {
        let stamp = self.stamp_with(hash_outputs(staged_dir)?);
        crate::atomic::write_json(&staged_dir.join(STAMP_FILE), &stamp)
    }
}

/// The config keys whose values differ between two recorded configs, with both values.
pub fn key_changes(old: &Value, new: &Value) -> Vec<Change> {
    fn walk(prefix: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<Change>) {
        if let (Some(Value::Object(a)), Some(Value::Object(b))) = (old, new) {
            let keys: BTreeSet<_> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&p, a.get(k), b.get(k), out);
            }
        } else if old != new {
            out.push(Change::Key {
                key: prefix.to_string(),
                old: old.cloned(),
                new: new.cloned(),
            });
        }
    }
    let mut out = Vec::new();
    walk("", Some(old), Some(new), &mut out);
    out
}

/// The changed keys' names, comma-separated.
pub fn changed_keys(old: &Value, new: &Value) -> String {
    let names: Vec<String> = key_changes(old, new)
        .into_iter()
        .map(|c| match c {
            Change::Key { key, .. } => key,
            other => other.to_string(),
        })
        .collect();
    names.join(", ")
}

/// The stamp of the stage folder `dir`: `None` when there is none, an error naming the file
/// when it is not a valid stamp.
pub fn read_stamp(dir: &Path) -> Result<Option<Stamp>> {
    let path = dir.join(STAMP_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Stamp::parse(&text, &path).map(Some)
}
