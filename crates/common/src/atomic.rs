//! Outputs appear complete or not at all: files and folders are written under a temporary
//! name beside their target and renamed into place when finished. The one implementation of
//! this in the workspace: stage outputs, adapters, training checkpoints and reports use it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// `.<name>.<tag>-<pid>-<n>` beside `path`: hidden, unique within and across processes.
fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file or folder name", path.display()))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ok(path.with_file_name(format!(".{}.{tag}-{pid}-{n}", name.to_string_lossy())))
}

/// Whether a folder entry is what an interrupted write or swap left behind (a process
/// killed midway cannot clean up after itself; whoever owns the folder removes these).
pub fn is_leftover(file_name: &str) -> bool {
    file_name.starts_with('.') && (file_name.contains(".tmp-") || file_name.contains(".old-"))
}

/// What [`recover`] did beside a folder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// An interrupted commit had moved the folder aside: it is back in place.
    pub restored: bool,
    /// Leftovers of interrupted writes and commits, removed.
    pub removed: Vec<PathBuf>,
}

/// Puts back what an interrupted [`StagingDir::commit`] of `target` left, and removes the
/// leftovers of interrupted writes beside it. A commit moves the old folder aside before
/// renaming the new one in: killed between the two, the target is missing and the old folder
/// stands beside it, and it goes back in place. Only for a caller that knows no other process
/// is writing `target` (the pipeline holds its artifacts root's lock).
pub fn recover(target: &Path) -> Result<Recovered> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        anyhow::bail!("{}: not a file or folder name", target.display());
    };
    let mut recovered = Recovered::default();
    if !parent.is_dir() {
        return Ok(recovered);
    }
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut olds = Vec::new();
    let mut tmps = Vec::new();
    for entry in
        fs::read_dir(parent).with_context(|| format!("cannot list {}", parent.display()))?
    {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        if rest.starts_with("old-") {
            olds.push(entry.path());
        } else if rest.starts_with("tmp-") {
            tmps.push(entry.path());
        }
    }
    if !target.exists() {
        // The newest one moved aside is the last complete folder.
        let newest = olds
            .iter()
            .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
            .cloned();
        if let Some(old) = newest {
            fs::rename(&old, target).with_context(|| {
                format!("cannot move {} back to {}", old.display(), target.display())
            })?;
            olds.retain(|p| p != &old);
            recovered.restored = true;
        }
    }
    for path in olds.into_iter().chain(tmps) {
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove the leftover {}", path.display()))?;
        recovered.removed.push(path);
    }
    Ok(recovered)
}

/// Removes the folder `path` (missing is fine) so that no reader sees it half-deleted: it is
/// renamed to a leftover name beside it (`.<name>.tmp-…`), then deleted. Killed midway, the
/// folder is there whole or not at all, and the leftover goes with the others ([`recover`],
/// [`is_leftover`]).
pub fn remove_dir(path: &Path) -> Result<()> {
    let doomed = sibling(path, "tmp")?;
    match fs::rename(path, &doomed) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot remove {}", path.display())),
    }
    fs::remove_dir_all(&doomed).with_context(|| format!("cannot remove {}", doomed.display()))
}

/// Writes a file through `write`, then renames it over `path`.
pub fn write_file(path: &Path, write: impl FnOnce(&mut fs::File) -> Result<()>) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create folder {}", parent.display()))?;
    }
    let tmp = sibling(path, "tmp")?;
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
    /// Creates the temporary folder (and the target's parents).
    pub fn new(target: &Path) -> Result<Self> {
        let tmp = sibling(target, "tmp")?;
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

    /// Flushes the staged files to disk, then replaces the target folder with the staged one:
    /// readers see the old folder or the new one, and a crash leaves one of them complete.
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_tree(&self.tmp).with_context(|| format!("cannot flush {}", self.tmp.display()))?;
        if self.target.exists() {
            let old = sibling(&self.target, "old")?;
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

/// fsync of every file below `dir` and of the folders themselves, so that the rename that
/// publishes them cannot reach the disk before their contents do.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            fs::File::open(entry.path())?.sync_all()?;
        }
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let err = write_file(&path, |_| anyhow::bail!("boom"));
        assert!(err.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn write_file_replaces_and_creates_parents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/out.txt");
        write_bytes(&path, b"one").unwrap();
        write_bytes(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names(path.parent().unwrap()), ["out.txt"]);
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
        fs::create_dir(staged.path().join("sub")).unwrap();
        fs::write(staged.path().join("sub/new"), "y").unwrap();
        staged.commit().unwrap();
        assert!(target.join("sub/new").exists() && !target.join("old").exists());
        assert_eq!(names(dir.path()), ["stage"]);
    }

    #[test]
    fn staging_dir_creates_missing_parents() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/adapter");
        let staged = StagingDir::new(&target).unwrap();
        fs::write(staged.path().join("f"), "z").unwrap();
        assert_eq!(staged.commit().unwrap(), target);
        assert_eq!(fs::read(target.join("f")).unwrap(), b"z");
    }

    #[test]
    fn temporaries_are_recognised_as_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("step-00000004");
        let staged = StagingDir::new(&target).unwrap();
        let tmp = staged.path().file_name().unwrap().to_str().unwrap();
        assert!(is_leftover(tmp), "{tmp}");
        let old = sibling(&target, "old").unwrap();
        assert!(is_leftover(old.file_name().unwrap().to_str().unwrap()));
        // The name an older version gave half-written checkpoints.
        assert!(is_leftover(".tmp-step-00000008-1"));
        assert!(!is_leftover("step-00000004") && !is_leftover("adapter"));
    }

    /// A commit killed after moving the old folder aside: the old folder comes back, and the
    /// staged one and other leftovers go.
    #[test]
    fn an_interrupted_commit_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("stage");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("f"), "previous").unwrap();
        let staged = StagingDir::new(&target).unwrap();
        fs::write(staged.path().join("f"), "next").unwrap();
        let old = sibling(&target, "old").unwrap();
        fs::rename(&target, &old).unwrap();
        std::mem::forget(staged); // killed: no drop runs
        fs::write(dir.path().join(".stage.tmp-99999-0"), "half a file").unwrap();
        fs::write(dir.path().join("other"), "not ours").unwrap();

        let recovered = recover(&target).unwrap();
        assert!(recovered.restored);
        assert_eq!(recovered.removed.len(), 2, "{recovered:?}");
        assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "previous");
        assert_eq!(names(dir.path()), ["other", "stage"]);
        // Nothing left to do.
        assert_eq!(recover(&target).unwrap(), Recovered::default());
    }

    /// Killed after the new folder went in: the old one is only removed.
    #[test]
    fn a_commit_killed_before_cleaning_up_keeps_the_new_folder() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("stage");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("f"), "new").unwrap();
        let old = sibling(&target, "old").unwrap();
        fs::create_dir(&old).unwrap();
        fs::write(old.join("f"), "old").unwrap();
        let recovered = recover(&target).unwrap();
        assert!(!recovered.restored && recovered.removed == [old]);
        assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "new");
        assert_eq!(names(dir.path()), ["stage"]);
        // A missing parent is nothing to recover.
        assert_eq!(
            recover(&dir.path().join("none/stage")).unwrap(),
            Recovered::default()
        );
    }

    #[test]
    fn remove_dir_leaves_nothing_or_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("step-00000002");
        fs::create_dir_all(target.join("sub")).unwrap();
        fs::write(target.join("sub/f"), "x").unwrap();
        remove_dir(&target).unwrap();
        assert_eq!(names(dir.path()), Vec::<String>::new());
        remove_dir(&target).unwrap(); // already gone
                                      // The name a removal killed midway leaves is a leftover.
        let doomed = sibling(&target, "tmp").unwrap();
        assert!(is_leftover(doomed.file_name().unwrap().to_str().unwrap()));
    }

    #[test]
    fn a_path_without_a_name_is_an_error() {
        let err = StagingDir::new(Path::new("/")).err().unwrap().to_string();
        assert!(err.contains("not a file or folder name"), "{err}");
    }
}
