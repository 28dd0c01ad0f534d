//! The artifacts root as a place the pipeline may write: it holds only what the pipeline
//! writes, one run at a time holds it (a lock), and a run starts by putting back what a killed
//! one left behind. Checked before any work, so that a wrong `artifacts` (the checkout, a
//! folder of the user's) is an error and nothing in it is touched.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use common::atomic;
use fs4::{FileExt, TryLockError};

use crate::graph::{StageId, TRAIN_LOG_FILE};
use crate::layout::{Layout, CHECKPOINTS_DIR, TIMINGS_FILE};
use crate::stamp::owner;

/// The lock file in the root, held by the run in progress; it names the holder.
pub const LOCK_FILE: &str = ".lock";

/// Names the pipeline writes into the root.
fn known(name: &str) -> bool {
    StageId::ALL.iter().any(|s| s.dir_name() == name)
        || [CHECKPOINTS_DIR, LOCK_FILE, TIMINGS_FILE].contains(&name)
}

/// For a leftover of an interrupted write or commit (`.NAME.tmp-…`, `.NAME.old-…`), the name
/// it was for and the rest.
fn leftover_target(name: &str) -> Option<(&str, &str)> {
    if !atomic::is_leftover(name) {
        return None;
    }
    // The tag (`tmp-PID-N`, `old-PID-N`) holds no dot; the name it was for may (`log.jsonl`).
    name.strip_prefix('.')
        .and_then(|rest| rest.rsplit_once('.'))
}

/// A leftover of an interrupted write or commit of something the pipeline writes.
fn our_leftover(name: &str) -> bool {
    leftover_target(name).is_some_and(|(target, _)| known(target))
}

/// Files a desktop adds to any folder it shows.
fn desktop_clutter(name: &str) -> bool {
    matches!(name, ".DS_Store" | "Thumbs.db" | "desktop.ini")
}

/// Checks, without writing anything, that `root` is missing or holds only what the pipeline
/// writes: each stage folder with its own stage's stamp, the checkpoints folder, the lock and
/// leftovers of interrupted runs.
pub fn check(root: &Path) -> Result<()> {
    let fix = "`artifacts` must name a folder of the pipeline's own: a new one, or one \
               an earlier run made (pass --set artifacts=PATH)";
    if root.as_os_str().is_empty() {
        bail!("the artifacts root is empty: {fix}");
    }
    if !root.exists() {
        return Ok(());
    }
    if !root.is_dir() {
        bail!(
            "the artifacts root {} is not a folder: {fix}",
            root.display()
        );
    }
    let mut foreign = Vec::new();
    let entries = fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !(known(&name) || our_leftover(&name) || desktop_clutter(&name)) {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
        let more = match foreign.len() {
            n if n > 5 => format!(" and {} more", n - 5),
            _ => String::new(),
        };
        bail!(
            "the artifacts root {} holds files the pipeline did not write ({}{more}): {fix}",
            root.display(),
            shown.join(", ")
        );
    }
    let layout = Layout::new(root);
    for stage in StageId::ALL {
        check_stage_dir(&layout.stage_dir(stage), stage)?;
    }
    let checkpoints = root.join(CHECKPOINTS_DIR);
    if checkpoints.exists() {
        let own = |dir: &Path, allowed: &dyn Fn(&str) -> bool| -> Result<()> {
            for entry in fs::read_dir(dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if !(allowed(&name) || atomic::is_leftover(&name)) {
                    bail!(
                        "{} holds {name}, which the pipeline did not write: {fix}",
                        dir.display()
                    );
                }
            }
            Ok(())
        };
        own(&checkpoints, &|n| n == "train")?;
        let train = layout.train_checkpoints();
        if train.is_dir() {
            // The checkpoints, and the log of the run they belong to.
            own(&train, &|n| n.starts_with("step-") || n == TRAIN_LOG_FILE)?;
        }
    }
    Ok(())
}

/// A stage folder may be replaced only when it holds that stage's stamp (or is missing).
pub fn check_stage_dir(dir: &Path, stage: StageId) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    match owner(dir) {
        Some(name) if name == stage.recipe() => Ok(()),
        Some(name) => bail!(
            "{} holds the stamp of stage `{name}`, not `{}`: it is not this stage's folder; \
             move it away",
            dir.display(),
            stage.recipe()
        ),
        None => bail!(
            "{} exists but holds no stamp of stage `{}`: the pipeline did not write it (or its \
             stamp.json was removed), and it will not be replaced; move it away, or delete it \
             to rebuild the stage",
            dir.display(),
            stage.recipe()
        ),
    }
}

/// The artifacts root, held by this process until dropped.
#[derive(Debug)]
pub struct HeldRoot {
    root: PathBuf,
    /// The lock: held exclusively by a run that may write; shared (or none) by a run on a root
    /// it may only read.
    lock: Option<File>,
    /// Why this process may not write the root (its lock file cannot be made); None if it may.
    read_only: Option<std::io::Error>,
    /// This run made the root: if it ends with nothing else in it, it goes again.
    created: bool,
}

/// Whether an error making the lock file means that this process may not write the root: no
/// permission (EACCES, EPERM: a root of another user, an immutable folder) or a read-only file
/// system (EROFS).
fn denied(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
    )
}

/// The error for a root another run holds, naming it as its lock file says.
fn in_use(root: &Path, lock: &mut File) -> anyhow::Error {
    let mut text = String::new();
    lock.read_to_string(&mut text).ok();
    let who = match text.trim() {
        "" => "another run".to_string(),
        who => who.to_string(),
    };
    anyhow::anyhow!(
        "{} is in use by {who}: one run at a time per artifacts root; wait for it to finish \
         (or stop it), or pass --set artifacts=PATH",
        root.display()
    )
}

impl HeldRoot {
    /// Checks `root` ([`check`]), creates it if missing, takes its lock (an error naming the
    /// holder when another run has it) and recovers what interrupted runs left: stage folders
    /// an interrupted commit moved aside go back, staged and moved-aside copies are removed.
    /// `holder` says who holds it, for a second run's error.
    pub fn acquire(root: &Path, holder: &str) -> Result<HeldRoot> {
        check(root)?;
        let created = !root.exists();
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create the artifacts root {}", root.display()))?;
        let path = root.join(LOCK_FILE);
        let mut lock = loop {
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path);
            let mut lock = match opened {
                Ok(lock) => lock,
                Err(err) if denied(&err) => return Self::read_only(root, &path, err),
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot open {}", path.display()))
                }
            };
            // fs4's lock (flock), named in full: std's inherent File::try_lock needs Rust 1.89.
            match FileExt::try_lock(&lock) {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Err(in_use(root, &mut lock)),
                Err(TryLockError::Error(err)) => {
                    return Err(err).with_context(|| format!("cannot lock {}", path.display()))
                }
            }
            // The holder before us removes the file as it lets go: a lock taken on the file it
            // removed holds nothing, so take it again on the file that is there now.
            if same_file(&lock, &path) {
                break lock;
            }
        };
        lock.set_len(0)?;
        lock.seek(SeekFrom::Start(0))?;
        writeln!(lock, "process {} ({holder})", std::process::id())?;
        lock.flush()?;
        let held = HeldRoot {
            root: root.to_path_buf(),
            lock: Some(lock),
            read_only: None,
            created,
        };
        held.recover()?;
        Ok(held)
    }

    /// The root of a run that may not write it (`why`: its lock file cannot be made), held for
    /// reading: a stage that is up to date says so, one that must run fails at
    /// [`HeldRoot::writable`]. A run in progress there (of a user who may write) still holds
    /// the lock file, and this run is refused as any second run is; otherwise the lock is
    /// held shared while this run reads, so that a run that would write waits its turn.
    /// Nothing is recovered: what killed runs left stays until a run that may write comes.
    fn read_only(root: &Path, path: &Path, why: std::io::Error) -> Result<HeldRoot> {
        let lock = match File::open(path) {
            Ok(mut lock) => match FileExt::try_lock_shared(&lock) {
                Ok(()) => Some(lock),
                Err(TryLockError::WouldBlock) => return Err(in_use(root, &mut lock)),
                Err(TryLockError::Error(err)) => {
                    return Err(err).with_context(|| format!("cannot lock {}", path.display()))
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).with_context(|| format!("cannot open {}", path.display())),
        };
        Ok(HeldRoot {
            root: root.to_path_buf(),
            lock,
            read_only: Some(why),
            created: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether this run may write the root: an error naming it, why not and what to do if not.
    pub fn writable(&self) -> Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some(why) => bail!(
                "the artifacts root {root} is read-only to this run (cannot open {lock} for \
                 writing: {why}): make it writable (`chmod -R u+w {root}`, or remount it \
                 read-write), or pass --set artifacts=PATH to write the outputs elsewhere",
                root = self.root.display(),
                lock = self.root.join(LOCK_FILE).display()
            ),
        }
    }

    fn recover(&self) -> Result<()> {
        let layout = Layout::new(&self.root);
        for stage in StageId::ALL {
            let dir = layout.stage_dir(stage);
            let recovered = atomic::recover(&dir)?;
            if recovered.restored {
                eprintln!(
                    "{}: put back the previous outputs (a run was stopped while replacing them)",
                    dir.display()
                );
            }
        }
        atomic::recover(&self.root.join(CHECKPOINTS_DIR))?;
        // The checkpoints of a run killed while removing them after its commit.
        let train = layout.train_checkpoints();
        atomic::recover(&train)?;
        // Checkpoints a killed run was writing, replacing or removing (each `step-N` is
        // committed and removed as a stage folder is).
        if train.is_dir() {
            let mut targets: Vec<String> = Vec::new();
            for entry in fs::read_dir(&train)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if let Some((target, _)) = leftover_target(&name) {
                    targets.push(target.to_string());
                }
            }
            targets.sort();
            targets.dedup();
            for target in targets {
                atomic::recover(&train.join(target))?;
            }
        }
        Ok(())
    }
}

impl Drop for HeldRoot {
    fn drop(&mut self) {
        // Removed while still locked (a run that opened it meanwhile notices, see `acquire`),
        // so that the root holds only outputs; a root this run made and left empty goes too.
        // A run that only read leaves the lock file as it found it.
        if self.read_only.is_none() {
            let _ = fs::remove_file(self.root.join(LOCK_FILE));
            if self.created {
                let _ = fs::remove_dir(&self.root);
            }
        }
        if let Some(lock) = &self.lock {
            let _ = FileExt::unlock(lock);
        }
    }
}

/// Whether the open `file` is the file at `path` now.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_folder_of_other_files_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("Cargo.toml"), "[workspace]").unwrap();
        fs::create_dir(root.join("train")).unwrap();
        fs::write(root.join("train/lib.rs"), "").unwrap();
        let err = HeldRoot::acquire(root, "test").unwrap_err().to_string();
        assert!(
            err.contains("holds files the pipeline did not write (Cargo.toml)")
                && err.contains("--set artifacts="),
            "{err}"
        );
        assert_eq!(names(root), ["Cargo.toml", "train"], "nothing written");
    }

    #[test]
    fn a_stage_folder_without_its_stamp_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        fs::create_dir_all(root.join("train")).unwrap();
        fs::write(root.join("train/notes.txt"), "mine").unwrap();
        let err = HeldRoot::acquire(&root, "test").unwrap_err().to_string();
        assert!(err.contains("holds no stamp of stage `train`"), "{err}");
        fs::write(root.join("train/stamp.json"), r#"{"stage": "report"}"#).unwrap();
        let err = check(&root).unwrap_err().to_string();
        assert!(
            err.contains("stamp of stage `report`, not `train`"),
            "{err}"
        );
        fs::write(root.join("train/stamp.json"), r#"{"stage": "train"}"#).unwrap();
        check(&root).unwrap();
        assert_eq!(names(&root), ["train"]);
        // `just all` records the stages' times in the root.
        fs::write(root.join(TIMINGS_FILE), "{}\n").unwrap();
        check(&root).unwrap();
    }

    #[test]
    fn foreign_checkpoints_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        fs::create_dir_all(root.join("checkpoints/train/my-model")).unwrap();
        let err = check(&root).unwrap_err().to_string();
        assert!(err.contains("holds my-model"), "{err}");
    }

    #[test]
    fn one_run_at_a_time_and_the_second_names_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        let held = HeldRoot::acquire(&root, "train").unwrap();
        let err = HeldRoot::acquire(&root, "evaluate")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("in use by process {} (train)", std::process::id())),
            "{err}"
        );
        drop(held);
        // A run that made the root and wrote nothing leaves nothing behind.
        assert!(!root.exists());
        let again = HeldRoot::acquire(&root, "evaluate").unwrap();
        assert_eq!(again.path(), root);
        assert_eq!(names(&root), [LOCK_FILE]);
    }

    #[test]
    fn leftovers_of_killed_runs_are_cleaned_and_interrupted_commits_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        // data: moved aside by a commit that was killed before the new folder went in.
        fs::create_dir_all(root.join(".data.old-4242-0")).unwrap();
        fs::write(
            root.join(".data.old-4242-0/stamp.json"),
            r#"{"stage":"data-prep"}"#,
        )
        .unwrap();
        fs::create_dir_all(root.join(".data.tmp-4242-1")).unwrap();
        // tokens: a half-staged folder of a killed run.
        fs::create_dir_all(root.join(".tokens.tmp-17-3/x")).unwrap();
        // checkpoints: the log a resumed run was rewriting, a removal of them all and a
        // checkpoint's removal, each killed midway.
        let train = root.join("checkpoints/train");
        fs::create_dir_all(train.join(".step-00000002.tmp-17-5")).unwrap();
        fs::write(train.join(".log.jsonl.tmp-17-4"), "{").unwrap();
        fs::write(train.join("log.jsonl"), "{}\n").unwrap();
        fs::create_dir_all(root.join("checkpoints/.train.tmp-16-2/step-00000004")).unwrap();
        let held = HeldRoot::acquire(&root, "test").unwrap();
        assert_eq!(names(&root), [LOCK_FILE, "checkpoints", "data"]);
        assert_eq!(names(&root.join("checkpoints")), ["train"]);
        assert_eq!(names(&train), ["log.jsonl"]);
        fs::remove_dir_all(root.join("checkpoints")).unwrap();
        fs::create_dir(root.join("report")).unwrap();
        fs::write(root.join("report/stamp.json"), r#"{"stage":"report"}"#).unwrap();
        assert!(root.join("data/stamp.json").exists());
        drop(held);
        // Leftovers of names the pipeline does not write are someone else's.
        fs::create_dir_all(root.join(".photos.tmp-1-1")).unwrap();
        assert!(HeldRoot::acquire(&root, "test").is_err());
    }

    /// `dir` read-only to this process as the kernel enforces it (permission bits; for root,
    /// whom they do not bind, `chattr -R +i`), until `undo` is called; Err when not possible.
    #[cfg(unix)]
    fn read_only(dir: &Path, undo: bool) -> std::result::Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let root_user = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let (program, args) = match (root_user, undo) {
            (true, false) => ("chattr", ["-R", "+i"]),
            (true, true) => ("chattr", ["-R", "-i"]),
            (false, false) => ("chmod", ["-R", "a-w"]),
            (false, true) => ("chmod", ["-R", "u+w"]),
        };
        let status = std::process::Command::new(program)
            .args(args)
            .arg(dir)
            .status()
            .map_err(|e| format!("{program}: {e}"))?;
        if !status.success() {
            return Err(format!("{program} {args:?} failed"));
        }
        if !undo && fs::write(dir.join("probe"), "").is_ok() {
            return Err(format!("{} is still writable", dir.display()));
        }
        Ok(())
    }

    /// A root this process may not write to is held for reading: no lock file made, nothing
    /// recovered, and [`HeldRoot::writable`] says why and what to do; a run holding its lock
    /// (one that may write) still refuses it.
    #[cfg(unix)]
    #[test]
    fn a_read_only_root_is_held_for_reading_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        fs::create_dir_all(root.join("data")).unwrap();
        fs::write(root.join("data/stamp.json"), r#"{"stage":"data-prep"}"#).unwrap();
        fs::create_dir_all(root.join(".tokens.tmp-17-3")).unwrap();
        if let Err(why) = read_only(&root, false) {
            eprintln!("SKIPPED: a_read_only_root_is_held_for_reading_only: {why}");
            return;
        }
        let outcome = (|| {
            let held = HeldRoot::acquire(&root, "evaluate").unwrap();
            let err = held.writable().unwrap_err().to_string();
            let lock = root.join(LOCK_FILE);
            assert!(
                err.starts_with(&format!(
                    "the artifacts root {} is read-only to this run (cannot open {} for writing: ",
                    root.display(),
                    lock.display()
                )) && err.ends_with("or pass --set artifacts=PATH to write the outputs elsewhere"),
                "{err}"
            );
            drop(held);
            assert_eq!(
                names(&root),
                [".tokens.tmp-17-3", "data"],
                "nothing written"
            );
        })
        .pipe_catch();
        read_only(&root, true).unwrap();
        outcome.unwrap();

        // A writer holds it (the lock file is there), then the root turns read-only.
        let writer = HeldRoot::acquire(&root, "train").unwrap();
        writer.writable().unwrap();
        read_only(&root, false).unwrap();
        let outcome = (|| {
            let err = HeldRoot::acquire(&root, "evaluate")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("in use by process {} (train)", std::process::id())),
                "{err}"
            );
            drop(writer); // cannot remove its lock file now: a reader takes it shared
            let reader = HeldRoot::acquire(&root, "evaluate").unwrap();
            assert!(reader.writable().is_err());
            // ...which a run that may write respects.
            read_only(&root, true).unwrap();
            let err = HeldRoot::acquire(&root, "train").unwrap_err().to_string();
            assert!(err.contains("is in use by process"), "{err}");
            drop(reader);
            HeldRoot::acquire(&root, "train").unwrap();
        })
        .pipe_catch();
        read_only(&root, true).unwrap();
        outcome.unwrap();
    }

    /// Runs a closure, catching a panic so that the caller can undo what it did first.
    trait PipeCatch {
        fn pipe_catch(self) -> std::thread::Result<()>;
    }

    impl<F: FnOnce()> PipeCatch for F {
        fn pipe_catch(self) -> std::thread::Result<()> {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(self))
        }
    }

    #[test]
    fn an_empty_root_is_refused() {
        let err = check(Path::new("")).unwrap_err().to_string();
        assert!(err.contains("the artifacts root is empty"), "{err}");
    }
}
