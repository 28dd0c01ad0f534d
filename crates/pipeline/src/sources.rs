//! Where a stage's sources are ([`SourceFiles`]), and their hashes as stamps record them.
//!
//! A stage says where each [`Source`] the graph declares for it is, listed by the one rule
//! for its kind here; the runner hashes them under the source's prefix (as DVC hashes a
//! stage's `deps`), so that what a stamp records of a source is decided in one place.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use common::shards::{shard_names, INDEX_FILE, SINGLE_FILE};
use sha2::{Digest, Sha256};

use crate::graph::Source;
use crate::stamp::{hash_bytes, hash_file};
use crate::{Config, StageId};

// The model folder's config, which [`Source::Model`] and [`Source::Tokenizer`] both need, and
// its tokenizer ([`Source::Tokenizer`]): named once, in `hub`, which finds the folder.
use hub::{CONFIG_FILE, TOKENIZER_FILE};

/// What a model folder must hold for a stage that declares `sources` in the graph:
/// [`Source::Model`] needs the weights, [`Source::Tokenizer`] the tokenizer (what `hub`
/// resolves: see [`model_dir`]).
pub fn needs(sources: &[Source]) -> hub::Needs {
    hub::Needs {
        weights: sources.contains(&Source::Model),
        tokenizer: sources.contains(&Source::Tokenizer),
    }
}

/// The folder of `config`'s model (`model.source` at `model.revision`, through the HF cache
/// or as a local folder) holding what `stage` [`needs`] by the sources the graph declares for
/// it: the one way every stage that reads the model finds it.
pub fn model_dir(stage: StageId, config: &Config) -> Result<PathBuf> {
    let model = &config.model;
    hub::model_dir(&model.source, &model.revision, needs(stage.spec().sources))
}

/// What one stamp entry of a source stands for, and so how it is hashed.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A file: its sha256, as `sha256sum` prints it.
    File(PathBuf),
    /// One thing in shards, in order: a single shard's sha256, else the sha256 of the shards'
    /// sha256s joined by newlines.
    Shards(Vec<PathBuf>),
    /// The files that count of a folder, by relative path, in order: the sha256 of each one's
    /// `path\0length\0` and bytes, one after another (whatever else the folder holds).
    Tree(Vec<(String, PathBuf)>),
}

impl Content {
    /// Its sha256, hex.
    pub fn hash(&self) -> Result<String> {
        match self {
            Content::File(path) => hash_file(path),
            Content::Shards(paths) => {
                let hashes = paths
                    .iter()
                    .map(|p| hash_file(p))
                    .collect::<Result<Vec<_>>>()?;
                Ok(match hashes.as_slice() {
                    [one] => one.clone(),
                    many => hash_bytes(many.join("\n").as_bytes()),
                })
            }
            Content::Tree(files) => {
                let mut hasher = Sha256::new();
                for (rel, path) in files {
                    hash_member(&mut hasher, rel, path)?;
                }
                Ok(hex::encode(hasher.finalize()))
            }
        }
    }
}

/// One file of a [`Content::Tree`] into `hasher`, streamed (its length comes first, so a file
/// that changes while it is read is an error rather than a wrong hash).
fn hash_member(hasher: &mut Sha256, rel: &str, path: &Path) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    hasher.update(format!("{rel}\0{len}\0"));
    let mut buf = vec![0u8; 1 << 16];
    let mut read = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        ensure!(read <= len, "{} grew while it was hashed", path.display());
        hasher.update(&buf[..n]);
    }
    ensure!(read == len, "{} shrank while it was hashed", path.display());
    Ok(())
}

/// Where one source's files are: each by its stamp name without the source's prefix (the
/// runner adds [`Source::prefix`]) and what it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFiles {
    source: Source,
    files: Vec<(String, Content)>,
}

impl SourceFiles {
    /// The model folder `dir`'s config and weights ([`Source::Model`]): see [`model_files`].
    pub fn model(dir: &Path) -> Result<SourceFiles> {
        let files = model_files(dir)?
            .into_iter()
            .map(|(name, path)| (name, Content::File(path)))
            .collect();
        Ok(SourceFiles {
            source: Source::Model,
            files,
        })
    }

    /// The model folder `dir`'s `tokenizer.json` ([`Source::Tokenizer`]).
    pub fn tokenizer(dir: &Path) -> Result<SourceFiles> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            bail!("model folder {} has no {TOKENIZER_FILE}", dir.display());
        }
        Ok(SourceFiles {
            source: Source::Tokenizer,
            files: vec![(TOKENIZER_FILE.to_string(), Content::File(path))],
        })
    }

    /// The dataset's parts ([`Source::Dataset`]), as its reader names them (`train`, `test`,
    /// `archive`): only the reader knows which files of a source hold the reviews.
    pub fn dataset(parts: Vec<(String, Content)>) -> SourceFiles {
        SourceFiles {
            source: Source::Dataset,
            files: parts,
        }
    }

    pub fn source(&self) -> Source {
        self.source
    }

    /// Each entry's stamp name (under the source's prefix) → sha256.
    pub fn hashes(&self) -> Result<BTreeMap<String, String>> {
        let prefix = self.source.prefix();
        self.files
            .iter()
            .map(|(name, content)| {
                let name = format!("{prefix}{name}");
                let hash = content
                    .hash()
                    .with_context(|| format!("hashing input {name}"))?;
                Ok((name, hash))
            })
            .collect()
    }
}

/// The files of a model folder that decide its outputs, by name in the folder: `config.json`
/// and the weights, a single file or the shard index and every shard it names.
pub fn model_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = vec![(CONFIG_FILE.to_string(), dir.join(CONFIG_FILE))];
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    if single.exists() {
        files.push((SINGLE_FILE.to_string(), single));
    } else if index.exists() {
        files.push((INDEX_FILE.to_string(), index.clone()));
        for shard in shard_names(&index)? {
            let path = dir.join(&shard);
            files.push((shard, path));
        }
    } else {
        bail!(
            "model folder {} has no {SINGLE_FILE} (nor a sharded index {INDEX_FILE})",
            dir.display()
        );
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names and hashes stamps have recorded all along: changing them would make every
    /// existing artifact stale.
    #[test]
    fn hashes_are_named_and_computed_as_stamps_record_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write(CONFIG_FILE, "{}");
        write(SINGLE_FILE, "weights");
        write(TOKENIZER_FILE, "tok");
        let sha = |text: &str| hash_bytes(text.as_bytes());

        let model = SourceFiles::model(dir).unwrap().hashes().unwrap();
        let names: Vec<&str> = model.keys().map(String::as_str).collect();
        assert_eq!(names, ["model/config.json", "model/model.safetensors"]);
        assert_eq!(model["model/model.safetensors"], sha("weights"));
        let tokenizer = SourceFiles::tokenizer(dir).unwrap().hashes().unwrap();
        assert_eq!(
            tokenizer,
            BTreeMap::from([("tokenizer/tokenizer.json".to_string(), sha("tok"))])
        );

        let data = SourceFiles::dataset(vec![
            ("train".into(), Content::Shards(vec![dir.join(CONFIG_FILE)])),
            (
                "test".into(),
                Content::Shards(vec![dir.join(CONFIG_FILE), dir.join(SINGLE_FILE)]),
            ),
            (
                "tree".into(),
                Content::Tree(vec![("a/b.txt".into(), dir.join(TOKENIZER_FILE))]),
            ),
        ])
        .hashes()
        .unwrap();
        assert_eq!(data["source/train"], sha("{}"));
        assert_eq!(
            data["source/test"],
            sha(&format!("{}\n{}", sha("{}"), sha("weights")))
        );
        assert_eq!(data["source/tree"], sha("a/b.txt\x003\x00tok"));
    }

    /// A stage's model folder must hold what the graph declares the stage reads: a local
    /// folder without a tokenizer serves train (weights) but not tokenize or export.
    #[test]
    fn a_stage_model_folder_holds_what_its_sources_need() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join(CONFIG_FILE), "{}").unwrap();
        let mut config = Config::default();
        config.model.source = dir.display().to_string();
        assert_eq!(model_dir(StageId::Train, &config).unwrap(), dir);
        for stage in [StageId::Tokenize, StageId::Export] {
            let err = model_dir(stage, &config).unwrap_err().to_string();
            let want = format!("model folder {} has no {TOKENIZER_FILE}", dir.display());
            assert_eq!(err, want, "{stage:?}");
        }
        std::fs::write(dir.join(TOKENIZER_FILE), "{}").unwrap();
        assert_eq!(model_dir(StageId::Export, &config).unwrap(), dir);
    }

    #[test]
    fn a_folder_without_weights_or_tokenizer_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let err = SourceFiles::model(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("has no model.safetensors"), "{err}");
        let err = SourceFiles::tokenizer(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("has no tokenizer.json"), "{err}");
    }
}
