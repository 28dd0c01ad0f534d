//! Resumable training checkpoints.
//!
//! Each checkpoint is a folder `step-NNNNNNNN/` (the optimizer steps done) holding
//! - `tensors.safetensors`: `param/<name>` (the trainable tensors), `optim/<key>` (the
//!   optimizer state) and, when the best adapter is kept, `best/<name>`;
//! - `history.json`: the history so far, the records as serde writes them (every float reads
//!   back bit for bit, as resuming bit for bit needs: the best epoch and the epoch's running
//!   loss are derived from it);
//! - `state.json`: the fingerprint, the position (epoch, next batch) and the optimizer's count.
//!
//! A checkpoint is staged under a temporary name and renamed into place (`common::atomic`), so a
//! folder named `step-…` is complete by construction; leftovers of a killed write are removed.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use common::atomic::{self, StagingDir};

use crate::history::Record;
use crate::observer::Skipped;

const STATE_FILE: &str = "state.json";
const TENSORS_FILE: &str = "tensors.safetensors";
const HISTORY_FILE: &str = "history.json";
/// 3: `history.json` holds the records' floats as numbers (2 held their bit patterns). A
/// checkpoint of this run in another format is unusable: skipped for an older one.
const FORMAT: u32 = 3;
/// How many complete checkpoints to keep.
const KEEP: usize = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Optimizer steps done.
    pub global_step: u64,
    /// The 0-based epoch to continue in.
    pub epoch: u64,
    /// The next batch of that epoch.
    pub batch: u64,
    /// `Optimizer::steps()`.
    pub optimizer_steps: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    fingerprint: String,
    position: Position,
}

/// What a checkpoint holds.
pub struct Snapshot {
    pub position: Position,
    pub params: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    pub best: Vec<(String, Tensor)>,
    pub history: Vec<Record>,
}

/// The checkpoint folder of one training run.
pub struct CheckpointStore {
    dir: PathBuf,
    fingerprint: String,
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

impl CheckpointStore {
    /// `fingerprint` identifies the run's config and inputs: checkpoints of another are
    /// never resumed.
    pub fn new(dir: &Path, fingerprint: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            fingerprint: fingerprint.to_string(),
        }
    }

    /// Complete checkpoints, newest first.
    fn complete(&self) -> Result<Vec<(u64, PathBuf)>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(step) = entry.file_name().to_str().and_then(step_of) {
                found.push((step, entry.path()));
            }
        }
        found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
        Ok(found)
    }

    /// The newest complete checkpoint with this run's fingerprint, if any. Foreign ones are
    /// skipped, and so are unusable ones for an older one; each is handed to `skipped`.
    pub fn latest(
        &self,
        device: &Device,
        mut skipped: impl FnMut(&Path, Skipped),
    ) -> Result<Option<(PathBuf, Snapshot)>> {
        for (_, path) in self.complete()? {
            match self.read(&path, device) {
                Ok(Some(snapshot)) => return Ok(Some((path, snapshot))),
                Ok(None) => skipped(&path, Skipped::Foreign),
                Err(err) => skipped(&path, Skipped::Unusable(err)),
            }
        }
        Ok(None)
    }

    fn read(&self, path: &Path, device: &Device) -> Result<Option<Snapshot>> {
        let text = fs::read_to_string(path.join(STATE_FILE))?;
        let state: StateFile = serde_json::from_str(&text)?;
        if state.fingerprint != self.fingerprint {
            return Ok(None);
        }
        if state.format != FORMAT {
            bail!(
                "written in checkpoint format {}, this build reads format {FORMAT}",
                state.format
            );
        }
        let tensors = candle_core::safetensors::load(path.join(TENSORS_FILE), device)?;
        let (mut params, mut optimizer, mut best) = (Vec::new(), Vec::new(), Vec::new());
        for (name, t) in tensors {
            // A run never writes non-finite state (it stops first); such a checkpoint was
            // damaged, and resuming from it would fail at once, every time.
            if !lora_classifier::all_finite(&t)? {
                bail!("tensor '{name}' holds NaN or infinite values");
            }
            if let Some(n) = name.strip_prefix("param/") {
                params.push((n.to_string(), t));
            } else if let Some(n) = name.strip_prefix("optim/") {
                optimizer.push((n.to_string(), t));
            } else if let Some(n) = name.strip_prefix("best/") {
                best.push((n.to_string(), t));
            } else {
                bail!("unexpected tensor {name}");
            }
        }
        let text = fs::read_to_string(path.join(HISTORY_FILE))?;
        let history: Vec<Record> = serde_json::from_str(&text)
            .with_context(|| format!("{HISTORY_FILE} is not a run's history"))?;
        if let Some(row) = history.iter().position(|r| !r.is_finite()) {
            bail!("{HISTORY_FILE}: row {row} holds a non-finite loss");
        }
        Ok(Some(Snapshot {
            position: state.position,
            params,
            optimizer,
            best,
            history,
        }))
    }

    /// The newest complete checkpoint of this run, if any.
    pub fn latest_path(&self) -> Result<Option<PathBuf>> {
        for (_, path) in self.complete()? {
            let state = fs::read_to_string(path.join(STATE_FILE))
                .ok()
                .and_then(|text| serde_json::from_str::<StateFile>(&text).ok());
            if state.is_some_and(|s| s.fingerprint == self.fingerprint && s.format == FORMAT) {
                return Ok(Some(path));
            }
        }
        Ok(None)
    }

    /// Removes leftovers of writes that were killed.
    pub fn clean_partial(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if atomic::is_leftover(&entry.file_name().to_string_lossy()) {
                fs::remove_dir_all(entry.path()).ok();
            }
        }
        Ok(())
    }

    /// Writes a checkpoint, then keeps only the newest two. Returns its folder.
    pub fn write(&self, snapshot: &Snapshot) -> Result<PathBuf> {
        let target = self
            .dir
            .join(format!("step-{:08}", snapshot.position.global_step));
        let result = (|| -> Result<()> {
            // Same step from another config (or a rerun) is replaced.
            let staged = StagingDir::new(&target)?;
            let tensors: std::collections::HashMap<String, Tensor> = [
                ("param", &snapshot.params),
                ("optim", &snapshot.optimizer),
                ("best", &snapshot.best),
            ]
            .into_iter()
            .flat_map(|(prefix, list)| {
                list.iter()
                    .map(move |(n, t)| (format!("{prefix}/{n}"), t.clone()))
            })
            .collect();
            candle_core::safetensors::save(&tensors, staged.path().join(TENSORS_FILE))?;
            atomic::write_json(&staged.path().join(HISTORY_FILE), &snapshot.history)?;
            let state = StateFile {
                format: FORMAT,
                fingerprint: self.fingerprint.clone(),
                position: snapshot.position.clone(),
            };
            atomic::write_json(&staged.path().join(STATE_FILE), &state)?;
            staged.commit()?;
            Ok(())
        })();
        result.with_context(|| format!("writing checkpoint {}", target.display()))?;
        // Renamed away before deleted: a folder named `step-…` is never half-deleted either.
        for (_, old) in self.complete()?.into_iter().skip(KEEP) {
            atomic::remove_dir(&old).ok();
        }
        Ok(target)
    }

    /// Removes every checkpoint (after the stage's outputs are committed).
    pub fn remove_all(&self) -> Result<()> {
        // Renamed away first: killed midway, no half-deleted checkpoint stays under its name
        // (the leftover goes at the next run's start, `pipeline::root`).
        atomic::remove_dir(&self.dir)?;
        // `checkpoints/` too, when nothing else is in it (fails harmlessly otherwise).
        if let Some(parent) = self.dir.parent() {
            fs::remove_dir(parent).ok();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RecordKind;

    fn snapshot(step: u64) -> Snapshot {
        let t = Tensor::new(&[step as f32, 1.5], &Device::Cpu).unwrap();
        Snapshot {
            position: Position {
                global_step: step,
                epoch: 0,
                batch: step,
                optimizer_steps: step,
            },
            params: vec![("w".into(), t.clone())],
            optimizer: vec![("exp_avg/w".into(), t)],
            best: vec![],
            // Numbers whose shortest decimal forms are long: they must come back bit for bit.
            history: vec![Record {
                kind: RecordKind::Epoch,
                epoch: 1,
                step,
                train_loss: 0.1 + 0.2,
                learning_rate: Some(1.0 / 3.0),
                samples_per_s: None,
                val_loss: Some(f64::MIN_POSITIVE),
                val_accuracy: Some(2f64.powi(-1000)),
            }],
        }
    }

    #[test]
    fn keeps_the_newest_two_and_resumes_only_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ckpt");
        let store = CheckpointStore::new(&dir, "run a");
        for step in [2, 4, 6] {
            store.write(&snapshot(step)).unwrap();
        }
        let names: Vec<_> = store
            .complete()
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(names, vec![6, 4]);
        let (path, snap) = store.latest(&Device::Cpu, |_, _| {}).unwrap().unwrap();
        assert!(path.ends_with("step-00000006"));
        assert_eq!(snap.position, snapshot(6).position);
        assert_eq!(snap.history, snapshot(6).history);
        assert_eq!(snap.params[0].1.to_vec1::<f32>().unwrap(), vec![6.0, 1.5]);

        // A half-written folder is not a checkpoint, and is cleaned up.
        fs::create_dir_all(dir.join(".tmp-step-00000008-1")).unwrap();
        assert!(store
            .latest_path()
            .unwrap()
            .unwrap()
            .ends_with("step-00000006"));
        store.clean_partial().unwrap();
        assert!(!dir.join(".tmp-step-00000008-1").exists());

        let other = CheckpointStore::new(&dir, "run b");
        let mut foreign = Vec::new();
        let found = other.latest(&Device::Cpu, |p, why| {
            assert!(matches!(why, Skipped::Foreign), "{why:?}");
            foreign.push(p.to_path_buf());
        });
        assert!(found.unwrap().is_none());
        assert_eq!(
            foreign.len(),
            2,
            "both checkpoints of run a are skipped as foreign"
        );
        assert!(other.latest_path().unwrap().is_none());
        store.remove_all().unwrap();
        assert!(!dir.exists());
    }

    /// A checkpoint with non-finite state is skipped for the one before it, or none.
    #[test]
    fn checkpoints_with_non_finite_state_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&tmp.path().join("ckpt"), "run");
        store.write(&snapshot(2)).unwrap();
        let mut bad = snapshot(4);
        bad.optimizer[0].1 = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
        store.write(&bad).unwrap();
        let mut unusable = Vec::new();
        let (path, snap) = store
            .latest(&Device::Cpu, |p, why| unusable.push((p.to_path_buf(), why)))
            .unwrap()
            .unwrap();
        assert!(path.ends_with("step-00000002"), "{}", path.display());
        assert!(
            matches!(&unusable[..], [(p, Skipped::Unusable(_))] if p.ends_with("step-00000004"))
        );
        assert_eq!(snap.position.global_step, 2);
        assert!(store
            .read(&store.dir.join("step-00000004"), &Device::Cpu)
            .err()
            .unwrap()
            .to_string()
            .contains("tensor 'optim/exp_avg/w' holds NaN or infinite values"));

        // A non-finite loss in the history counts too; with no good one left, none is used.
        let mut bad = snapshot(2);
        bad.history.clear();
        bad.history.push(Record {
            kind: RecordKind::Step,
            epoch: 1,
            step: 2,
            train_loss: f64::INFINITY,
            learning_rate: Some(1e-3),
            samples_per_s: None,
            val_loss: None,
            val_accuracy: None,
        });
        store.write(&bad).unwrap();
        let err = store
            .read(&store.dir.join("step-00000002"), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "history.json: row 0 holds a non-finite loss");
        assert!(store.latest(&Device::Cpu, |_, _| {}).unwrap().is_none());
    }

    /// A checkpoint of this run written in format 2 (floats as bit patterns) is skipped for an
    /// older one, saying why.
    #[test]
    fn checkpoints_of_an_older_format_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&tmp.path().join("ckpt"), "run");
        store.write(&snapshot(2)).unwrap();
        let old = store.write(&snapshot(4)).unwrap();
        let state = fs::read_to_string(old.join(STATE_FILE)).unwrap();
        let state = state.replace(&format!("\"format\": {FORMAT}"), "\"format\": 2");
        fs::write(old.join(STATE_FILE), state).unwrap();
        fs::write(
            old.join(HISTORY_FILE),
            r#"[{"kind":"Epoch","epoch":1,"step":4,"train_loss":4599075939470750516,
                "learning_rate":null,"samples_per_s":null,"val_loss":null,"val_accuracy":null}]"#,
        )
        .unwrap();
        let mut unusable = Vec::new();
        let (path, _) = store
            .latest(&Device::Cpu, |p, why| match why {
                Skipped::Unusable(err) => unusable.push((p.to_path_buf(), err.to_string())),
                Skipped::Foreign => panic!("{} is this run's", p.display()),
            })
            .unwrap()
            .unwrap();
        assert!(path.ends_with("step-00000002"), "{}", path.display());
        assert_eq!(
            unusable,
            vec![(
                old.clone(),
                format!("written in checkpoint format 2, this build reads format {FORMAT}")
            )]
        );
        assert!(store
            .latest_path()
            .unwrap()
            .unwrap()
            .ends_with("step-00000002"));
    }

    fn bits(r: &Record) -> (RecordKind, u32, u64, [Option<u64>; 5]) {
        let floats = [
            Some(r.train_loss),
            r.learning_rate,
            r.samples_per_s,
            r.val_loss,
            r.val_accuracy,
        ];
        (r.kind, r.epoch, r.step, floats.map(|v| v.map(f64::to_bits)))
    }

    /// Every NaN-free f64 in every field of a record comes back bit for bit from a checkpoint
    /// and from `history.parquet`: the edge cases, then bit patterns drawn at random.
    #[test]
    fn history_records_survive_checkpoints_and_parquet_exactly() {
        let mut values = vec![
            0.0,
            -0.0,
            0.1 + 0.2,
            1.0 / 3.0,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            -f64::from_bits(0x000f_ffff_ffff_ffff),
            f64::EPSILON,
            f64::MAX,
            f64::MIN,
            2f64.powi(-1000),
            1e23,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for n in 0u64.. {
            if values.len() == 400 {
                break;
            }
            let v = f64::from_bits(common::hash::splitmix64(0x5eed + n));
            if !v.is_nan() {
                values.push(v);
            }
        }
        let kinds = [RecordKind::Step, RecordKind::Eval, RecordKind::Epoch];
        let history: Vec<Record> = (0..values.len())
            .map(|i| {
                let at = |k: usize| values[(i + k * 97) % values.len()];
                let some = |k: usize| (i % 7 != k).then(|| at(k));
                Record {
                    kind: kinds[i % 3],
                    epoch: [0, 1, u32::MAX][i % 3],
                    step: [0, i as u64, u64::MAX][(i / 3) % 3],
                    train_loss: at(0),
                    learning_rate: some(1),
                    samples_per_s: some(2),
                    val_loss: some(3),
                    val_accuracy: some(4),
                }
            })
            .collect();
        let expected: Vec<_> = history.iter().map(bits).collect();

        // Resuming refuses a history with a non-finite loss (it was damaged): read what was
        // written,
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&tmp.path().join("ckpt"), "run");
        let mut snap = snapshot(2);
        snap.history = history.clone();
        let dir = store.write(&snap).unwrap();
        let text = fs::read_to_string(dir.join(HISTORY_FILE)).unwrap();
        let back: Vec<Record> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.iter().map(bits).collect::<Vec<_>>(), expected);
        // and the finite ones through the store itself.
        let finite: Vec<Record> = history.iter().filter(|r| r.is_finite()).cloned().collect();
        assert!(finite.len() > 100, "{}", finite.len());
        snap.history = finite.clone();
        store.write(&snap).unwrap();
        let (_, read) = store.latest(&Device::Cpu, |_, _| {}).unwrap().unwrap();
        assert_eq!(
            read.history.iter().map(bits).collect::<Vec<_>>(),
            finite.iter().map(bits).collect::<Vec<_>>()
        );

        let path = tmp.path().join(pipeline::history::HISTORY_FILE);
        pipeline::history::write_parquet(&history, &path).unwrap();
        let back = pipeline::history::read_parquet(&path).unwrap();
        assert_eq!(back.iter().map(bits).collect::<Vec<_>>(), expected);
    }
}
