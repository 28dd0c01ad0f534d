//! The train stage's view of a run: progress bars and log lines from the training loop's
//! events, and the hook that lets a caller act after each checkpoint.

use std::path::Path;

use pipeline::cli::Progress;
use training::{Event, JsonLog, Observer, RecordKind, Skipped};

/// Called with a checkpoint's folder and optimizer step after it is written.
pub type AfterCheckpoint<'h> = dyn FnMut(&Path, u64) + 'h;
pub type CheckpointHook<'h> = &'h mut AfterCheckpoint<'h>;

/// Shows a run on the terminal (or as plain lines in a log).
pub struct Console<'a, 'h> {
    progress: Option<Progress>,
    after_checkpoint: Option<&'a mut AfterCheckpoint<'h>>,
    /// The run's records as JSON lines, written as they come.
    pub log: JsonLog,
}

impl<'a, 'h> Console<'a, 'h> {
    pub fn new(after_checkpoint: Option<&'a mut AfterCheckpoint<'h>>, log: JsonLog) -> Self {
        Self {
            progress: None,
            after_checkpoint,
            log,
        }
    }

    fn line(&self, text: &str) {
        match &self.progress {
            Some(p) => p.println(text),
            None => println!("{text}"),
        }
    }
}

impl Observer for Console<'_, '_> {
    fn on(&mut self, event: Event<'_>) {
        self.log.record(&event);
        match event {
            Event::CheckpointSkipped { path, why } => match why {
                Skipped::Foreign => println!(
                    "train: ignoring checkpoint {} (made with another config or other inputs)",
                    path.display()
                ),
                Skipped::Unusable(err) => println!(
                    "train: skipping checkpoint {}: {err:#}; trying an older one",
                    path.display()
                ),
            },
            Event::Resumed {
                path,
                position,
                batches,
            } => println!(
                "train: resuming from checkpoint {} (step {}, epoch {}, batch {}/{batches})",
                path.display(),
                position.global_step,
                position.epoch + 1,
                position.batch
            ),
            Event::Started { unusable_skipped } if unusable_skipped > 0 => {
                println!("train: no usable checkpoint of this run: starting from the beginning")
            }
            Event::Started { .. } => {}
            Event::EpochStarted {
                epoch,
                epochs,
                batches,
                first_batch,
            } => {
                let mut progress = Progress::new(&format!("epoch {epoch}/{epochs}"), batches);
                if first_batch > 0 {
                    progress.advance(first_batch, "resumed");
                }
                self.progress = Some(progress);
            }
            Event::Step(r) => {
                if let Some(p) = &mut self.progress {
                    p.advance(
                        1,
                        &format!(
                            "loss {:.4} lr {:.2e} {:.1} samples/s",
                            r.train_loss,
                            r.learning_rate.unwrap_or(0.0),
                            r.samples_per_s.unwrap_or(0.0)
                        ),
                    );
                }
            }
            Event::Validating { done, total } => {
                if let Some(p) = &mut self.progress {
                    p.message(&format!("validating {done}/{total} reviews"));
                }
            }
            Event::Validated(r) => {
                let (loss, accuracy) = (r.val_loss.unwrap_or(f64::NAN), r.val_accuracy);
                let accuracy = accuracy.unwrap_or(f64::NAN);
                self.line(&match r.kind {
                    RecordKind::Epoch => format!(
                        "epoch {}: train loss {:.4}, validation loss {loss:.4}, accuracy {accuracy:.4}",
                        r.epoch, r.train_loss
                    ),
                    _ => format!(
                        "step {}: validation loss {loss:.4}, accuracy {accuracy:.4}",
                        r.step
                    ),
                });
            }
            Event::EpochFinished { .. } => {
                if let Some(p) = self.progress.take() {
                    p.finish();
                }
            }
            Event::CheckpointWritten { dir, step } => {
                if let Some(hook) = &mut self.after_checkpoint {
                    hook(dir, step);
                }
            }
        }
    }
}
