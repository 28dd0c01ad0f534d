//! The run's log as JSON lines, one per optimizer step and per validation, with Hugging Face
//! Trainer's `log_history` field names (`loss`, `learning_rate`, `epoch`, `step`; `eval_loss`,
//! `eval_accuracy`), each appended and flushed as it happens, so that `tail -f` and any JSON
//! tool follow a run while it trains. An [`Observer`]: the loop knows nothing of it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::history::{Record, RecordKind};
use crate::observer::{Event, Observer};

/// Its name in the train stage's folder.
pub const LOG_FILE: &str = "log.jsonl";

/// A record as a `log_history` entry. `epoch` is fractional as HF's: steps done over steps
/// per epoch.
pub fn log_line(record: &Record, steps_per_epoch: u64) -> Value {
    let epoch = record.step as f64 / steps_per_epoch.max(1) as f64;
    match record.kind {
        RecordKind::Step => json!({
            "loss": record.train_loss,
            "learning_rate": record.learning_rate,
            "train_samples_per_second": record.samples_per_s,
            "epoch": epoch,
            "step": record.step,
        }),
        RecordKind::Eval | RecordKind::Epoch => json!({
            "eval_loss": record.val_loss,
            "eval_accuracy": record.val_accuracy,
            "epoch": epoch,
            "step": record.step,
        }),
    }
}

/// Appends a run's records to a JSON-lines file as they come. A fresh run starts the file
/// anew; a resumed run keeps the lines up to the step it resumes from. Writing must not stop
/// a run: the first error is kept for [`JsonLog::finish`].
pub struct JsonLog {
    path: PathBuf,
    file: Option<File>,
    steps_per_epoch: u64,
    error: Option<anyhow::Error>,
}

impl JsonLog {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            steps_per_epoch: 1,
            error: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first error writing the log, if any.
    pub fn finish(self) -> Result<()> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts the file over, keeping the lines of steps up to `through` (a resumed run).
    fn restart(&mut self, through: Option<u64>) -> Result<()> {
        let kept: Vec<String> = match (through, fs::read_to_string(&self.path)) {
            (Some(step), Ok(text)) => text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= step)
                })
                .map(|line| format!("{line}\n"))
                .collect(),
            _ => Vec::new(),
        };
        if let Some(parent) = self.path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // Replaced whole (written beside it, then renamed): a run killed here must not leave
        // the lines it keeps half-written or gone.
        common::atomic::write_bytes(&self.path, kept.concat().as_bytes())?;
        self.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
    }

    fn append(&mut self, line: Value) -> Result<()> {
        if self.file.is_none() {
            self.restart(None)?;
        }
        let file = self.file.as_mut().expect("opened above");
        // One write per line, then flush: a reader never sees half a line for long.
        file.write_all(format!("{line}\n").as_bytes())?;
        file.flush()?;
        Ok(())
    }

    /// Handles one event (for an observer that forwards events to it).
    pub fn record(&mut self, event: &Event<'_>) {
        let result = match event {
            Event::Started { .. } => self.restart(None),
            Event::Resumed {
                position, batches, ..
            } => {
                self.steps_per_epoch = *batches;
                self.restart(Some(position.global_step))
            }
            Event::EpochStarted { batches, .. } => {
                self.steps_per_epoch = *batches;
                Ok(())
            }
            Event::Step(r) | Event::Validated(r) => {
                let line = log_line(r, self.steps_per_epoch);
                self.append(line)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.error
                .get_or_insert(e.context(format!("writing {}", self.path.display())));
        }
    }
}

impl Observer for JsonLog {
    fn on(&mut self, event: Event<'_>) {
        self.record(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Position;

    fn record(kind: RecordKind, step: u64, loss: f64) -> Record {
        Record {
            kind,
            epoch: 1,
            step,
            train_loss: loss,
            learning_rate: (kind == RecordKind::Step).then_some(1e-3),
            samples_per_s: None,
            val_loss: (kind != RecordKind::Step).then_some(0.5),
            val_accuracy: (kind != RecordKind::Step).then_some(0.75),
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn hf_field_names_and_resumed_runs_keep_their_earlier_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(LOG_FILE);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "{\"step\": 99}\n").unwrap();
        let mut log = JsonLog::new(&path);
        log.on(Event::Started {
            unusable_skipped: 0,
        });
        log.on(Event::EpochStarted {
            epoch: 1,
            epochs: 1,
            batches: 4,
            first_batch: 0,
        });
        for step in 1..=4 {
            log.on(Event::Step(&record(RecordKind::Step, step, 0.7)));
        }
        log.on(Event::Validated(&record(RecordKind::Epoch, 4, 0.6)));
        let got = lines(&path);
        assert_eq!(got.len(), 5, "a fresh run starts the file anew");
        assert_eq!(got[1]["loss"], 0.7);
        assert_eq!(got[1]["learning_rate"], 1e-3);
        assert_eq!(
            (got[1]["epoch"].as_f64(), got[1]["step"].as_u64()),
            (Some(0.5), Some(2))
        );
        assert_eq!(got[4]["eval_loss"], 0.5);
        assert_eq!(got[4]["eval_accuracy"], 0.75);
        assert_eq!(got[4]["epoch"], 1.0);
        assert!(got[4].get("loss").is_none());

        // Resumed from step 2: the lines after it are dropped, then the run goes on.
        let mut log = JsonLog::new(&path);
        let position = Position {
            global_step: 2,
            epoch: 0,
            batch: 2,
            optimizer_steps: 2,
        };
        log.on(Event::Resumed {
            path: dir.path(),
            position: &position,
            batches: 4,
        });
        log.on(Event::Step(&record(RecordKind::Step, 3, 0.65)));
        let got = lines(&path);
        let steps: Vec<u64> = got.iter().map(|v| v["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3]);
        assert_eq!(got[2]["loss"], 0.65);
        log.finish().unwrap();

        // A log that cannot be written: the run goes on, the error comes at the end.
        let mut log = JsonLog::new(&dir.path().join("sub"));
        log.on(Event::Step(&record(RecordKind::Step, 1, 0.7)));
        let err = format!("{:#}", log.finish().unwrap_err());
        assert!(err.contains("writing"), "{err}");
    }
}
