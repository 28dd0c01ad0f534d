//! Stage stamps: what a stage's outputs were made from.
//!
//! Each stage writes `stamp.json` into its output folder, recording the
//! content hashes of its inputs, the config keys it reads, the program
//! version, its upstream stages and the hashes of its outputs. A stage whose
//! stamp still matches does no work; a stage reading from an upstream whose
//! stamp no longer matches the current config (or whose files changed) stops
//! and names the stage to run, instead of silently using stale artifacts.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::layout::{Layout, StageId};

pub const STAMP_FILE: &str = "stamp.json";

/// Bumped when an artifact's format changes, so old artifacts are rebuilt.
pub const ARTIFACT_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stamp {
    pub stage: String,
    pub program_version: String,
    pub artifact_format: u32,
    /// The config keys this stage reads, with their values.
    pub config: serde_json::Value,
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
}

impl Stamp {
    /// The first output that is missing from `dir` or changed since the stamp was written.
    pub fn damage(&self, dir: &Path) -> Result<Option<String>> {
        outputs_damaged(dir, self)
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

/// The running program: its version and a hash of its executable, so that a
/// rebuilt stage with changed code reruns even when the version number did
/// not change (e.g. artifacts restored from a CI cache).
pub fn program_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            let exe = std::env::current_exe()
                .ok()
                .and_then(|p| hash_file(&p).ok())
                .unwrap_or_else(|| "unknown".into());
            format!(
                "{} ({})",
                env!("CARGO_PKG_VERSION"),
                &exe[..exe.len().min(16)]
            )
        })
        .clone()
}

/// Hashes every file under `dir` (except the stamp), keyed by relative path.
fn hash_outputs(dir: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
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

/// What a stage is about to do: its identity, config and hashed inputs.
pub struct StageRun {
    pub id: StageId,
    pub dir: PathBuf,
    config: serde_json::Value,
    inputs: BTreeMap<String, String>,
    upstream: Vec<StageId>,
}

impl StageRun {
    pub fn new(layout: &Layout, id: StageId, config: &Config) -> Self {
        Self {
            id,
            dir: layout.stage_dir(id),
            config: config.sections(id.config_keys()),
            inputs: BTreeMap::new(),
            upstream: Vec::new(),
        }
    }

    /// Records an input file by a stable name (not its path, which differs
    /// between machines and caches).
    pub fn input_file(&mut self, name: &str, path: &Path) -> Result<()> {
        let hash = hash_file(path).with_context(|| format!("hashing input {name}"))?;
        self.inputs.insert(name.to_string(), hash);
        Ok(())
    }

    /// Records an input that is not a file (e.g. the content hash of a folder).
    pub fn input_hash(&mut self, name: &str, hash: String) {
        self.inputs.insert(name.to_string(), hash);
    }

    /// Checks that `upstream` is complete and current, then records each of
    /// `files` (paths relative to the upstream folder) as an input.
    pub fn upstream(
        &mut self,
        layout: &Layout,
        config: &Config,
        upstream: StageId,
        files: &[&str],
    ) -> Result<()> {
        verify_current(layout, config, upstream)?;
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
        if !self.upstream.contains(&upstream) {
            self.upstream.push(upstream);
        }
        Ok(())
    }

    fn stamp_with(&self, outputs: BTreeMap<String, String>) -> Stamp {
        Stamp {
            stage: self.id.recipe().to_string(),
            program_version: program_version(),
            artifact_format: ARTIFACT_FORMAT,
            config: self.config.clone(),
            inputs: self.inputs.clone(),
            outputs,
            upstream: self
                .upstream
                .iter()
                .map(|s| s.recipe().to_string())
                .collect(),
        }
    }

    /// Compares the stamp on disk with what this run would record.
    pub fn freshness(&self) -> Result<Freshness> {
        // A stamp that cannot be trusted is no stamp: the stage reruns and writes a good one.
        let stamp = match read_stamp(&self.dir) {
            Ok(Some(stamp)) => stamp,
            Ok(None) => return Ok(Freshness::Stale("no previous run".into())),
            Err(err) => return Ok(Freshness::Stale(format!("{err:#}"))),
        };
        let expected = self.stamp_with(BTreeMap::new());
        if stamp.program_version != expected.program_version
            || stamp.artifact_format != expected.artifact_format
        {
            return Ok(Freshness::Stale("the program changed".into()));
        }
        if stamp.config != expected.config {
            return Ok(Freshness::Stale(format!(
                "config changed: {}",
                changed_keys(&stamp.config, &expected.config)
            )));
        }
        if stamp.inputs != expected.inputs {
            let changed: Vec<_> = expected
                .inputs
                .iter()
                .filter(|(k, v)| stamp.inputs.get(*k) != Some(v))
                .map(|(k, _)| k.as_str())
                .chain(
                    stamp
                        .inputs
                        .keys()
                        .filter(|k| !expected.inputs.contains_key(*k))
                        .map(String::as_str),
                )
                .collect();
            return Ok(Freshness::Stale(format!(
                "inputs changed: {}",
                changed.join(", ")
            )));
        }
        if let Some(reason) = outputs_damaged(&self.dir, &stamp)? {
            return Ok(Freshness::Stale(reason));
        }
        Ok(Freshness::UpToDate)
    }

    /// Writes the stamp into the staged output folder, hashing what is there.
    pub fn write_stamp(&self, staged_dir: &Path) -> Result<()> {
        let stamp = self.stamp_with(hash_outputs(staged_dir)?);
        crate::atomic::write_json(&staged_dir.join(STAMP_FILE), &stamp)
    }
}

fn changed_keys(old: &serde_json::Value, new: &serde_json::Value) -> String {
    fn walk(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
        match (old, new) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) => walk(&p, x, y, out),
                        _ => out.push(p),
                    }
                }
            }
            _ if old != new => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out.join(", ")
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

/// The first output of `stamp` that is missing or changed (`stamp` was checked by
/// [`Stamp::parse`]: its outputs lie inside `dir`).
fn outputs_damaged(dir: &Path, stamp: &Stamp) -> Result<Option<String>> {
    for (rel, hash) in &stamp.outputs {
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

/// Errors unless `stage`'s outputs exist, are intact and were made with the
/// current config, and the same holds for its own upstream stages.
pub fn verify_current(layout: &Layout, config: &Config, stage: StageId) -> Result<()> {
    verify_tree(layout, config, stage, &mut Vec::new(), &mut HashSet::new())
}

/// `verify_current` along the upstream links: `path` holds the stages being checked (a stage
/// met again on it is a cycle), `done` those already found current.
fn verify_tree(
    layout: &Layout,
    config: &Config,
    stage: StageId,
    path: &mut Vec<StageId>,
    done: &mut HashSet<StageId>,
) -> Result<()> {
    if done.contains(&stage) {
        return Ok(());
    }
    let dir = layout.stage_dir(stage);
    let run = format!("run `just {}` (or `just all`) first", stage.recipe());
    let stamp =
        read_stamp(&dir).with_context(|| format!("{} cannot be trusted; {run}", dir.display()))?;
    let Some(stamp) = stamp else {
        bail!("{} has no complete output: {run}", dir.display());
    };
    let stamp_file = dir.join(STAMP_FILE);
    if stamp.stage != stage.recipe() {
        bail!(
            "{}: written by stage {:?}, not `{}`; {run}",
            stamp_file.display(),
            stamp.stage,
            stage.recipe()
        );
    }
    let current = config.sections(stage.config_keys());
    if stamp.config != current {
        bail!(
            "{} is stale: {} changed since `{}` ran; {run}",
            dir.display(),
            changed_keys(&stamp.config, &current),
            stage.recipe()
        );
    }
    // Only the format is checked here: the producer is another binary, and it
    // reruns itself when its own code changed.
    if stamp.artifact_format != ARTIFACT_FORMAT {
        bail!(
            "{} was written in an older artifact format; {run}",
            dir.display()
        );
    }
    if let Some(reason) = outputs_damaged(&dir, &stamp)? {
        bail!("{} is incomplete ({reason}); {run}", dir.display());
    }
    path.push(stage);
    for up in &stamp.upstream {
        let id = StageId::from_recipe(up).expect("Stamp::parse checked the upstream names");
        if path.contains(&id) {
            bail!(
                "{}: upstream stage `{up}` leads back to `{}` (a cycle): the stamp is corrupt; {run}",
                stamp_file.display(),
                stage.recipe()
            );
        }
        verify_tree(layout, config, id, path, done)
            .with_context(|| format!("{} depends on it", dir.display()))?;
    }
    path.pop();
    done.insert(stage);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Layout, Config) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            artifacts: dir.path().join("artifacts"),
            ..Config::default()
        };
        let layout = Layout::new(&config.artifacts);
        (dir, layout, config)
    }

    fn produce(run: &StageRun, files: &[(&str, &str)]) {
        let staged = crate::atomic::StagingDir::new(&run.dir).unwrap();
        for (name, content) in files {
            fs::write(staged.path().join(name), content).unwrap();
        }
        run.write_stamp(staged.path()).unwrap();
        staged.commit().unwrap();
    }

    #[test]
    fn a_stage_is_fresh_until_its_config_or_inputs_change() {
        let (tmp, layout, mut config) = setup();
        let source = tmp.path().join("source.txt");
        fs::write(&source, "reviews").unwrap();
        let make = |config: &Config| {
            let mut run = StageRun::new(&layout, StageId::DataPrep, config);
            run.input_file("source", &source).unwrap();
            run
        };
        let run = make(&config);
        assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
        produce(&run, &[("train.parquet", "rows")]);
        assert_eq!(make(&config).freshness().unwrap(), Freshness::UpToDate);

        // A key this stage does not read changes nothing.
        config.training.epochs = 7;
        assert_eq!(make(&config).freshness().unwrap(), Freshness::UpToDate);

        config.data.train_fraction = 0.5;
        match make(&config).freshness().unwrap() {
            Freshness::Stale(why) => assert!(why.contains("data.train_fraction"), "{why}"),
            f => panic!("{f:?}"),
        }
        config.data.train_fraction = 0.1;
        fs::write(&source, "other reviews").unwrap();
        assert!(matches!(
            make(&config).freshness().unwrap(),
            Freshness::Stale(_)
        ));
    }

    #[test]
    fn damaged_outputs_make_a_stage_stale() {
        let (_tmp, layout, config) = setup();
        let run = StageRun::new(&layout, StageId::DataPrep, &config);
        produce(&run, &[("train.parquet", "rows")]);
        fs::write(run.dir.join("train.parquet"), "edited").unwrap();
        assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
        fs::remove_file(run.dir.join("train.parquet")).unwrap();
        assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
    }

    /// Rewrites the stamp in `dir` through `edit` on its JSON.
    fn edit_stamp(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(STAMP_FILE);
        let mut json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut json);
        fs::write(&path, json.to_string()).unwrap();
    }

    /// data-prep and tokenize, both current.
    fn two_stages() -> (tempfile::TempDir, Layout, Config) {
        let (tmp, layout, config) = setup();
        let data = StageRun::new(&layout, StageId::DataPrep, &config);
        produce(&data, &[("train.parquet", "rows")]);
        let mut tok = StageRun::new(&layout, StageId::Tokenize, &config);
        tok.upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
            .unwrap();
        produce(&tok, &[("train.safetensors", "ids")]);
        verify_current(&layout, &config, StageId::Tokenize).unwrap();
        (tmp, layout, config)
    }

    /// What a train stage reading the tokens gets: an error, and no train folder.
    fn train_on_tokens_err(layout: &Layout, config: &Config) -> String {
        let mut train = StageRun::new(layout, StageId::Train, config);
        let err = train
            .upstream(layout, config, StageId::Tokenize, &["train.safetensors"])
            .unwrap_err();
        assert!(!layout.stage_dir(StageId::Train).exists());
        format!("{err:#}")
    }

    #[test]
    fn an_upstream_cycle_is_an_error_naming_the_stamp() {
        let (_tmp, layout, config) = two_stages();
        let tokens = layout.stage_dir(StageId::Tokenize);
        // A stage naming itself.
        edit_stamp(&tokens, |j| j["upstream"] = serde_json::json!(["tokenize"]));
        let err = train_on_tokens_err(&layout, &config);
        let stamp = tokens.join(STAMP_FILE).display().to_string();
        assert!(
            err.contains(&format!(
                "{stamp}: upstream stage `tokenize` leads back to `tokenize` (a cycle)"
            )) && err.contains("just tokenize"),
            "{err}"
        );
        // Two stages naming each other.
        edit_stamp(&tokens, |j| {
            j["upstream"] = serde_json::json!(["data-prep"])
        });
        let data = layout.stage_dir(StageId::DataPrep);
        edit_stamp(&data, |j| j["upstream"] = serde_json::json!(["tokenize"]));
        let err = train_on_tokens_err(&layout, &config);
        assert!(
            err.contains(&format!(
                "{}: upstream stage `tokenize` leads back to `data-prep` (a cycle)",
                data.join(STAMP_FILE).display()
            )),
            "{err}"
        );
    }

    #[test]
    fn outputs_outside_the_stage_folder_or_none_are_refused() {
        let (tmp, layout, config) = two_stages();
        let tokens = layout.stage_dir(StageId::Tokenize);
        let stamp = tokens.join(STAMP_FILE).display().to_string();
        let outside = tmp.path().join("outside.txt");
        fs::write(&outside, "x").unwrap();
        let hash = hash_file(&outside).unwrap();
        for (key, message) in [
            (
                "../../outside.txt",
                "is not a relative path inside the stage folder",
            ),
            (
                outside.to_str().unwrap(),
                "is not a relative path inside the stage folder",
            ),
            ("", "is not a relative path inside the stage folder"),
            (
                "./train.safetensors",
                "is not a relative path inside the stage folder",
            ),
        ] {
            edit_stamp(&tokens, |j| {
                j["outputs"] = serde_json::json!({ key: hash });
            });
            let err = train_on_tokens_err(&layout, &config);
            assert!(
                err.contains(&stamp) && err.contains(message) && err.contains("just tokenize"),
                "{key}: {err}"
            );
            // The stage itself is not up to date: it reruns.
            let run = StageRun::new(&layout, StageId::Tokenize, &config);
            match run.freshness().unwrap() {
                Freshness::Stale(why) => assert!(why.contains(message), "{why}"),
                f => panic!("{key}: {f:?}"),
            }
        }
        edit_stamp(&tokens, |j| j["outputs"] = serde_json::json!({}));
        let err = train_on_tokens_err(&layout, &config);
        assert!(err.contains(&format!("{stamp}: lists no outputs")), "{err}");
        let mut run = StageRun::new(&layout, StageId::Tokenize, &config);
        run.upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
            .unwrap();
        assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
    }

    #[test]
    fn a_stamp_of_another_stage_or_unknown_upstream_is_refused() {
        let (_tmp, layout, config) = two_stages();
        let tokens = layout.stage_dir(StageId::Tokenize);
        edit_stamp(&tokens, |j| j["upstream"] = serde_json::json!(["fetch"]));
        let err = train_on_tokens_err(&layout, &config);
        assert!(err.contains("unknown upstream stage \"fetch\""), "{err}");
        edit_stamp(&tokens, |j| {
            j["upstream"] = serde_json::json!(["data-prep"]);
            j["stage"] = serde_json::json!("train");
        });
        let err = train_on_tokens_err(&layout, &config);
        assert!(
            err.contains("written by stage \"train\", not `tokenize`"),
            "{err}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                "\\PC{0,12}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map("[a-z./]{0,8}", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A stamp-shaped object whose fields may be anything.
        fn stamp_like() -> impl Strategy<Value = serde_json::Value> {
            let path = prop_oneof![
                "[a-z]{1,6}(/[a-z]{1,6}){0,2}",
                "(\\.\\./|/|\\./)?[a-z./]{0,10}"
            ];
            (
                prop::collection::btree_map(path, "[0-9a-f]{4}", 0..4),
                prop::collection::vec(
                    prop::sample::select(vec!["data-prep", "tokenize", "train", "x", ""]),
                    0..3,
                ),
                json_value(),
                any::<bool>(),
            )
                .prop_map(|(outputs, upstream, config, typed)| {
                    serde_json::json!({
                        "stage": "tokenize",
                        "program_version": "1",
                        "artifact_format": if typed { serde_json::json!(1) } else { config.clone() },
                        "config": config,
                        "inputs": {},
                        "outputs": outputs,
                        "upstream": upstream,
                    })
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn garbled_stamps_never_panic(text in "\\PC{0,300}") {
                if let Err(e) = Stamp::parse(&text, Path::new("s/stamp.json")) {
                    let e = format!("{e:#}");
                    prop_assert!(e.contains("s/stamp.json"), "{}", e);
                }
            }

            #[test]
            fn a_parsed_stamp_keeps_its_promises(value in stamp_like()) {
                match Stamp::parse(&value.to_string(), Path::new("s/stamp.json")) {
                    Ok(stamp) => {
                        prop_assert!(!stamp.outputs.is_empty());
                        for rel in stamp.outputs.keys() {
                            let p = Path::new(rel);
                            // Joined to the stage folder, it cannot climb out of it.
                            prop_assert!(!rel.is_empty() && p.is_relative(), "{rel}");
                            prop_assert!(p.iter().all(|part| part != ".."), "{rel}");
                        }
                        for up in &stamp.upstream {
                            prop_assert!(StageId::from_recipe(up).is_some());
                        }
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        prop_assert!(e.starts_with("s/stamp.json"), "{}", e)
                    }
                }
            }
        }
    }

    #[test]
    fn downstream_refuses_a_stale_upstream_and_names_the_stage() {
        let (_tmp, layout, mut config) = setup();
        let data = StageRun::new(&layout, StageId::DataPrep, &config);
        produce(&data, &[("train.parquet", "rows")]);
        let mut tok = StageRun::new(&layout, StageId::Tokenize, &config);
        tok.upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
            .unwrap();
        produce(&tok, &[("train.safetensors", "ids")]);

        // Changing what data-prep reads makes data stale for tokenize and for train.
        config.data.train_fraction = 0.2;
        let mut tok = StageRun::new(&layout, StageId::Tokenize, &config);
        let err = tok
            .upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("just data-prep") && err.contains("data.train_fraction"),
            "{err}"
        );
        let err = verify_current(&layout, &config, StageId::Tokenize).unwrap_err();
        assert!(format!("{err:#}").contains("just data-prep"), "{err:#}");

        // A missing upstream names its stage too.
        let err = verify_current(&layout, &config, StageId::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("just train"), "{err}");
    }
}
