//! Finding models and datasets: a local folder, or a Hugging Face hub id
//! resolved through the standard HF cache, downloading into the cache only
//! when the file is not there and the hub may be reached.
//!
//! It knows nothing of the pipeline: what a caller needs of a model folder comes as [`Needs`]
//! (a stage's from the sources its graph declares, `pipeline::sources::needs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use common::shards::{shard_names, INDEX_FILE, SINGLE_FILE};
use hf_hub::{Cache, Repo, RepoType};

/// The model folder's config, which every use of a model folder needs.
pub const CONFIG_FILE: &str = "config.json";
/// The model folder's tokenizer ([`Needs::tokenizer`]).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What a model folder must hold besides [`CONFIG_FILE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The weights: `model.safetensors`, else the shard index and every shard it names.
    pub weights: bool,
    /// [`TOKENIZER_FILE`].
    pub tokenizer: bool,
}

/// `HF_HUB_OFFLINE` as huggingface_hub reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Is `source` a local path rather than a hub id?
pub fn is_local(source: &str) -> bool {
    let path = Path::new(source);
    path.exists() || source.starts_with('.') || source.starts_with('/') || source.contains('\\')
}

/// An environment variable's value as a path; empty counts as unset (an empty `HF_HOME` would
/// otherwise put the cache in the working directory).
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The Hugging Face home as huggingface_hub finds it: `HF_HOME`, else
/// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    env_path("HF_HOME")
        .or_else(|| env_path("XDG_CACHE_HOME").map(|dir| dir.join("huggingface")))
        .or_else(|| dirs::home_dir().map(|home| home.join(".cache/huggingface")))
        .unwrap_or_else(|| PathBuf::from(".cache/huggingface"))
}

/// The hub cache folder as huggingface_hub finds it: `HF_HUB_CACHE`, else `hf_home()/hub`.
/// (hf-hub 0.5's `Cache::from_env` reads only `HF_HOME`.)
pub fn cache_dir() -> PathBuf {
    env_path("HF_HUB_CACHE").unwrap_or_else(|| hf_home().join("hub"))
}

/// A hub cache and whether the hub may be asked for what it lacks.
#[derive(Debug, Clone)]
pub struct Hub {
    cache: PathBuf,
    offline: bool,
}

impl Hub {
    /// The cache and offline setting from the environment, as huggingface_hub reads them.
    pub fn from_env() -> Hub {
        Hub::new(cache_dir(), offline())
    }

    pub fn new(cache: PathBuf, offline: bool) -> Hub {
        Hub { cache, offline }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    fn cache(&self) -> Cache {
        Cache::new(self.cache.clone())
    }

    /// One file of a hub repository: from the cache, else downloaded into it.
    pub fn file(
        &self,
        repo_id: &str,
        kind: RepoType,
        revision: &str,
        file: &str,
    ) -> Result<PathBuf> {
        let repo = Repo::with_revision(repo_id.to_string(), kind, revision.to_string());
        if let Some(path) = self.cache().repo(repo.clone()).get(file) {
            return Ok(path);
        }
        let what = match kind {
            RepoType::Dataset => "dataset",
            _ => "model",
        };
        let fix = format!(
            "set HF_HOME (or HF_HUB_CACHE) to a Hugging Face cache that holds it, download it on a machine with \
             internet (`huggingface-cli download {}{repo_id} {file}`), or point the source at a local folder",
            if matches!(kind, RepoType::Dataset) { "--repo-type dataset " } else { "" }
        );
        if self.offline {
            bail!(
                "{what} {repo_id}: {file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set: {fix}",
                self.cache.display()
            );
        }
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(self.cache())
            .with_progress(true)
            .with_token(token());
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder
            .build()
            .context("cannot set up the Hugging Face hub client")?;
        api.repo(repo).get(file).map_err(|err| {
            anyhow::anyhow!(
                "{what} {repo_id}: {file} is not in the Hugging Face cache at {} and downloading it failed ({err}): {fix}",
                self.cache.display()
            )
        })
    }

    /// A model folder holding `config.json` and what `needs` asks of it: the weights (single
    /// file or shards) for [`Needs::weights`], `tokenizer.json` for [`Needs::tokenizer`].
    pub fn model_dir(&self, source: &str, revision: &str, needs: Needs) -> Result<PathBuf> {
        let mut needed = vec![CONFIG_FILE];
        if needs.tokenizer {
            needed.push(TOKENIZER_FILE);
        }
        if is_local(source) {
            let dir = Path::new(source);
            if !dir.is_dir() {
                bail!("model folder {} does not exist", dir.display());
            }
            for file in &needed {
                if !dir.join(file).exists() {
                    bail!("model folder {} has no {file}", dir.display());
                }
            }
            return Ok(dir.to_path_buf());
        }
        let mut dir = None;
        for file in needed {
            let path = self.file(source, RepoType::Model, revision, file)?;
            dir = path.parent().map(Path::to_path_buf);
        }
        if needs.weights {
            // Single file first; else the shard index and every shard it names.
            let single =
                Repo::with_revision(source.to_string(), RepoType::Model, revision.to_string());
            if self.cache().repo(single).get(SINGLE_FILE).is_none() {
                match self.file(source, RepoType::Model, revision, INDEX_FILE) {
                    Ok(index) => {
                        for shard in shard_names(&index)? {
                            self.file(source, RepoType::Model, revision, &shard)?;
                        }
                    }
                    Err(_) => {
                        self.file(source, RepoType::Model, revision, SINGLE_FILE)?;
                    }
                }
            }
        }
        dir.context("model files resolved to no folder")
    }

    /// A file of a hub dataset repository (through the cache).
    pub fn dataset_file(&self, repo_id: &str, revision: &str, file: &str) -> Result<PathBuf> {
        self.file(repo_id, RepoType::Dataset, revision, file)
    }
}

/// The commit a file or folder of the Hugging Face cache belongs to: the `<commit>` of
/// `…/models--org--name/snapshots/<commit>/…` (or `datasets--…`), which is what `refs/<revision>`
/// resolved to. `None` for anything outside a cache (a local folder).
pub fn snapshot_commit(path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.windows(3).find_map(|w| {
        let is_repo = w[0].starts_with("models--") || w[0].starts_with("datasets--");
        let is_commit = w[2].len() == 40 && w[2].chars().all(|c| c.is_ascii_hexdigit());
        (is_repo && w[1] == "snapshots" && is_commit).then(|| w[2].clone())
    })
}

/// The access token as huggingface_hub finds it: `HF_TOKEN`, else the `token` file in `hf_home()`.
fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .or_else(|| std::fs::read_to_string(hf_home().join("token")).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A model folder through the environment's cache (`Hub::model_dir`).
pub fn model_dir(source: &str, revision: &str, needs: Needs) -> Result<PathBuf> {
    Hub::from_env().model_dir(source, revision, needs)
}

/// A file of a hub dataset repository, through the environment's cache.
pub fn dataset_file(repo_id: &str, revision: &str, file: &str) -> Result<PathBuf> {
    Hub::from_env().dataset_file(repo_id, revision, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_of_a_cached_file_is_its_snapshot_folder() {
        let commit = "22b78143b3483ebdc945dc51b3715081fb0dd591";
        let cache = Path::new("/home/u/.cache/huggingface/hub");
        let model = cache.join(format!(
            "models--sentence-transformers--all-MiniLM-L6-v2/snapshots/{commit}"
        ));
        assert_eq!(snapshot_commit(&model).as_deref(), Some(commit));
        let data = cache.join(format!(
            "datasets--stanfordnlp--imdb/snapshots/{commit}/plain_text/train-00000-of-00001.parquet"
        ));
        assert_eq!(snapshot_commit(&data).as_deref(), Some(commit));
        // A local folder, a branch name where the commit should be, a look-alike path.
        assert_eq!(snapshot_commit(Path::new("/models/minilm")), None);
        assert_eq!(
            snapshot_commit(&cache.join("models--a--b/snapshots/main")),
            None
        );
        assert_eq!(
            snapshot_commit(Path::new(&format!("/x/snapshots/{commit}"))),
            None
        );
    }
}
