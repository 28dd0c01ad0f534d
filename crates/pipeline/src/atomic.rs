//! Outputs appear complete or not at all: everything is written under a
//! temporary name in the same folder and renamed into place when finished.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a file through `write`, then renames it over `path`.
pub fn write_file(path: &Path, write: impl FnOnce(&mut fs::File) -> Result<()>) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create folder {}", parent.display()))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write(&mut file)?;
        file.flush()?;
        file.sync_all()?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, |f| Ok(f.write_all(bytes)?))
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_bytes(path, text.as_bytes())
}

/// A folder filled under a temporary name and swapped in by [`StagingDir::commit`].
/// Dropped without commit (an error, a panic), it is removed and the previous
/// folder, if any, stays as it was.
pub struct StagingDir {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagingDir {
    pub fn new(target: &Path) -> Result<Self> {
        let tmp = temp_sibling(target);
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self {
            tmp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Replaces the target folder with the staged one.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            let old = self.target.with_file_name(format!(
                ".{}.old-{}",
                self.target.file_name().unwrap().to_string_lossy(),
                std::process::id()
            ));
            fs::rename(&self.target, &old)
                .with_context(|| format!("cannot move aside {}", self.target.display()))?;
            fs::rename(&self.tmp, &self.target)
                .with_context(|| format!("cannot rename into {}", self.target.display()))?;
            fs::remove_dir_all(&old).ok();
        } else {
            fs::rename(&self.tmp, &self.target)
                .with_context(|| format!("cannot rename into {}", self.target.display()))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let err = write_file(&path, |_| anyhow::bail!("boom"));
        assert!(err.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn staging_dir_swaps_in_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("stage");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("old"), "x").unwrap();
        {
            let staged = StagingDir::new(&target).unwrap();
            fs::write(staged.path().join("half"), "x").unwrap();
            // dropped: not committed
        }
        assert!(target.join("old").exists());
        let staged = StagingDir::new(&target).unwrap();
        fs::write(staged.path().join("new"), "y").unwrap();
        staged.commit().unwrap();
        assert!(target.join("new").exists() && !target.join("old").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
