//! The training loop: shuffled mini-batches, mean cross-entropy, backward, clipping, an
//! optimizer step on the scheduled learning rate; validation, history and checkpoints. What
//! happens is reported to an [`Observer`].

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use lora_classifier::{Mode, SequenceClassifier};

use crate::batches::{infer, Examples};
use crate::checkpoint::{CheckpointStore, Position, Snapshot};
use crate::clip::clip_grad_norm;
use crate::history::{best_and_last, epoch_mean_loss, Record, RecordKind};
use crate::observer::{Event, Observer, Skipped};
use crate::optim::{Optimizer, OptimizerSettings, OptimizerState};
use crate::schedule::{warmup_steps, Schedule, ScheduleKind};
use crate::seeds::{dropout_seed, epoch_permutation};

/// Everything the loop needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    pub seed: u64,
    pub optimizer: OptimizerSettings,
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    /// [`ScheduleKind::Step`]: multiply the rate by `step_gamma` every `step_size` steps.
    pub step_size: u64,
    pub step_gamma: f64,
    pub warmup_steps: u64,
    /// Used when `warmup_steps` is 0.
    pub warmup_ratio: f64,
    /// Rows per forward and backward pass.
    pub batch_size: usize,
    /// Batches whose gradients add up to one optimizer step (HF's
    /// `gradient_accumulation_steps`): a step sees `batch_size` × this many rows, in the memory
    /// of one batch.
    pub gradient_accumulation_steps: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps instead (HF's `max_steps`: it overrides `epochs`,
    /// and the schedule ends there).
    pub max_steps: Option<u64>,
    /// Stop when the validation loss has not improved for this many validations in a row
    /// (HF's `EarlyStoppingCallback`).
    pub early_stopping_patience: Option<u32>,
    pub max_grad_norm: Option<f64>,
    pub eval_every_steps: Option<u64>,
    pub checkpoint_every_steps: u64,
    /// Keep the adapter of the epoch with the lowest validation loss (else the last).
    pub keep_best: bool,
}

impl TrainSettings {
    /// Rows per optimizer step.
    pub fn rows_per_step(&self) -> usize {
        self.batch_size * self.gradient_accumulation_steps.max(1)
    }

    /// Optimizer steps per epoch (the last one may see fewer rows).
    pub fn steps_per_epoch(&self, train_len: usize) -> u64 {
        train_len.div_ceil(self.rows_per_step()) as u64
    }

    /// Optimizer steps of the whole run: `max_steps`, else every epoch's.
    pub fn total_steps(&self, train_len: usize) -> u64 {
        self.max_steps
            .unwrap_or(self.steps_per_epoch(train_len) * self.epochs as u64)
    }

    pub fn schedule_for(&self, train_len: usize) -> Schedule {
        let total = self.total_steps(train_len);
        Schedule {
            kind: self.schedule,
            base_lr: self.learning_rate,
            warmup_steps: warmup_steps(self.warmup_steps, self.warmup_ratio, total),
            total_steps: total,
            step_size: self.step_size,
            gamma: self.step_gamma,
        }
    }
}

/// Validation loss (mean cross-entropy) and accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    pub loss: f64,
    pub accuracy: f64,
}

/// What a finished run gives; the model's trainable tensors then hold the kept adapter.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub history: Vec<Record>,
    pub steps: u64,
    /// 1-based epoch with the lowest validation loss.
    pub best_epoch: u32,
    pub best: Validation,
    pub last: Validation,
    /// The epoch whose tensors the model now holds.
    pub adapter_epoch: u32,
    /// This run's training throughput (a resumed run counts only its own steps).
    pub samples_per_s: f64,
    pub wall_time_s: f64,
    pub resumed_from_step: Option<u64>,
}

/// Mean cross-entropy and accuracy over `examples`, in batches, without dropout or autograd.
pub fn evaluate(
    model: &SequenceClassifier,
    examples: &Examples,
    batch_size: usize,
    device: &Device,
) -> Result<Validation> {
    evaluate_with_progress(model, examples, batch_size, device, |_, _| {})
}

/// [`evaluate`], calling `progress(done, total)` with the rows classified after each batch.
pub fn evaluate_with_progress(
    model: &SequenceClassifier,
    examples: &Examples,
    batch_size: usize,
    device: &Device,
    mut progress: impl FnMut(u64, u64),
) -> Result<Validation> {
    if examples.is_empty() {
        bail!("cannot validate on an empty split");
    }
    let (mut loss_sum, mut correct, mut done) = (0f64, 0usize, 0u64);
    infer(model, examples, batch_size, device, |rows, logits| {
        let labels = examples.labels(rows, device)?;
        let loss = candle_nn::loss::cross_entropy(logits, &labels)?.to_scalar::<f32>()?;
        loss_sum += loss as f64 * rows.len() as f64;
        for (row, &i) in logits.to_vec2::<f32>()?.iter().zip(rows) {
            // The first maximum, as torch.argmax.
            let pred = row
                .iter()
                .enumerate()
                .fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
            correct += (pred as u32 == examples.labels[i]) as usize;
        }
        done += rows.len() as u64;
        progress(done, examples.len() as u64);
        Ok(())
    })?;
    Ok(Validation {
        loss: loss_sum / examples.len() as f64,
        accuracy: correct as f64 / examples.len() as f64,
    })
}

fn validation_of(record: &Record) -> Validation {
    Validation {
        loss: record.val_loss.unwrap_or(f64::NAN),
        accuracy: record.val_accuracy.unwrap_or(f64::NAN),
    }
}

/// The name of the first tensor that holds NaN or inf (`None` entries, e.g. a parameter with
/// no gradient, are skipped). One reduction per tensor (x − x sums to 0 exactly when every
/// value is finite) and a single read of all the sums: on a GPU, one synchronisation per call
/// rather than one per tensor.
fn first_non_finite(
    names: &[String],
    tensors: impl IntoIterator<Item = Option<Tensor>>,
) -> Result<Option<&str>> {
    let (mut which, mut sums) = (Vec::new(), Vec::new());
    for (i, t) in tensors.into_iter().enumerate() {
        if let Some(t) = t.filter(|t| t.dtype().is_float() && t.elem_count() > 0) {
            #[allow(clippy::eq_op)] // x − x on purpose
            sums.push((&t - &t)?.sum_all()?.to_dtype(candle_core::DType::F32)?);
            which.push(i);
        }
    }
    if sums.is_empty() {
        return Ok(None);
    }
    let sums = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?;
    Ok(which
        .into_iter()
        .zip(sums)
        .find(|(_, s)| *s != 0.0)
        .map(|(i, _)| names[i].as_str()))
}

/// `sum` + `more`, parameter by parameter (gradient accumulation).
fn add_grads(mut sum: GradStore, more: &GradStore, vars: &[Var]) -> Result<GradStore> {
    for var in vars {
        if let Some(g) = more.get(var.as_tensor()) {
            let total = match sum.get(var.as_tensor()) {
                Some(s) => (s + g)?,
                None => g.clone(),
            };
            sum.insert(var.as_tensor(), total);
        }
    }
    Ok(sum)
}

/// Whether the last `patience` validations all failed to improve on the best validation loss
/// before them (HF's `EarlyStoppingCallback` with threshold 0: only a lower loss improves).
pub fn stops_early(history: &[Record], patience: u32) -> bool {
    let losses: Vec<f64> = history.iter().filter_map(|r| r.val_loss).collect();
    let mut best = f64::INFINITY;
    let mut without_improvement = 0u32;
    for loss in losses {
        if loss < best {
            best = loss;
            without_improvement = 0;
        } else {
            without_improvement += 1;
        }
    }
    without_improvement >= patience
}

fn copies(vars: &[Var]) -> Result<Vec<Tensor>> {
    Ok(vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

/// The state of a run between steps: what a checkpoint saves.
struct Run<'a> {
    model: &'a SequenceClassifier,
    names: Vec<String>,
    vars: Vec<Var>,
    optimizer: Optimizer,
    /// Optimizer steps done (the schedule's position).
    step: u64,
    history: Vec<Record>,
    /// The trainable tensors of the best epoch so far (kept only for `keep_best`).
    best: Vec<Tensor>,
}

impl Run<'_> {
    fn restore(&mut self, snap: Snapshot) -> Result<()> {
        let mut params: HashMap<_, _> = snap.params.into_iter().collect();
        for (name, var) in self.names.iter().zip(&self.vars) {
            let t = params
                .remove(name)
                .with_context(|| format!("no tensor for {name}"))?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        self.optimizer.import_state(OptimizerState {
            steps: snap.position.optimizer_steps,
            tensors: snap.optimizer,
        })?;
        let mut best: HashMap<_, _> = snap.best.into_iter().collect();
        if !best.is_empty() {
            self.best = (self.names.iter())
                .map(|n| {
                    best.remove(n)
                        .with_context(|| format!("no best tensor for {n}"))
                })
                .collect::<Result<_>>()?;
        }
        self.history = snap.history;
        self.step = snap.position.global_step;
        Ok(())
    }

    fn snapshot(&self, position: Position) -> Result<Snapshot> {
        let named = |tensors: Vec<Tensor>| self.names.iter().cloned().zip(tensors).collect();
        Ok(Snapshot {
            position,
            params: named(self.vars.iter().map(|v| v.as_tensor().clone()).collect()),
            optimizer: self.optimizer.export_state()?.tensors,
            best: named(self.best.clone()),
            history: self.history.clone(),
        })
    }

    /// Validates and records it as a `kind` record of epoch `epoch_no`.
    fn validate(
        &mut self,
        kind: RecordKind,
        epoch_no: u32,
        validation: &Examples,
        batch_size: usize,
        device: &Device,
        observer: &mut dyn Observer,
    ) -> Result<Validation> {
        let v =
            evaluate_with_progress(self.model, validation, batch_size, device, |done, total| {
                observer.on(Event::Validating { done, total })
            })?;
        self.history.push(Record {
            kind,
            epoch: epoch_no,
            step: self.step,
            train_loss: epoch_mean_loss(&self.history, epoch_no),
            learning_rate: None,
            samples_per_s: None,
            val_loss: Some(v.loss),
            val_accuracy: Some(v.accuracy),
        });
        Ok(v)
    }
}

/// Trains `model`'s trainable tensors on `train`, validating on `validation`.
///
/// Resumes from the newest complete checkpoint in `store` made with the same fingerprint;
/// reports what happens to `observer`.
pub fn train(
    model: &SequenceClassifier,
    train: &Examples,
    validation: &Examples,
    settings: &TrainSettings,
    device: &Device,
    store: &CheckpointStore,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    let started = Instant::now();
    if train.is_empty() || validation.is_empty() {
        bail!("the train and validation splits must not be empty");
    }
    let params = model.trainable();
    let mut run = Run {
        model,
        names: params.iter().map(|(n, _)| n.clone()).collect(),
        vars: params.iter().map(|(_, v)| v.clone()).collect(),
        optimizer: Optimizer::new(settings.optimizer, params)?,
        step: 0,
        history: Vec::new(),
        best: Vec::new(),
    };
    let (n, bs) = (train.len(), settings.batch_size);
    let per_epoch = settings.steps_per_epoch(n);
    let schedule = settings.schedule_for(n);

    let (mut epoch0, mut batch0, mut resumed_from_step) = (0, 0, None);
    store.clean_partial()?;
    let mut unusable_skipped = 0;
    let latest = store.latest(device, |path, why| {
        unusable_skipped += matches!(why, Skipped::Unusable(_)) as usize;
        observer.on(Event::CheckpointSkipped { path, why });
    })?;
    match latest {
        Some((path, snap)) => {
            let position = snap.position.clone();
            (epoch0, batch0) = (position.epoch, position.batch);
            run.restore(snap)
                .with_context(|| format!("resuming from {}", path.display()))?;
            resumed_from_step = Some(run.step);
            observer.on(Event::Resumed {
                path: &path,
                position: &position,
                batches: per_epoch,
            });
        }
        None => observer.on(Event::Started { unusable_skipped }),
    }

    // A non-finite loss, gradient, parameter or validation loss stops the run: training on
    // would only spread the NaN, and nothing of it may be saved as an adapter. Checkpoints
    // written before it stay (they hold finite state; resuming skips any that do not).
    let stop = |what: String| -> anyhow::Error {
        let kept = match store.latest_path() {
            Ok(Some(p)) => format!("the last good checkpoint, {}, is kept", p.display()),
            _ => "no checkpoint was written yet".to_string(),
        };
        anyhow::anyhow!(
            "{what}: stopping without saving an adapter; {kept}. Lower the learning rate, or \
             clip the gradient norm"
        )
    };
    let check_validation = |v: &Validation, step: u64, epoch_no: u32| -> Result<()> {
        if v.loss.is_finite() {
            return Ok(());
        }
        Err(stop(format!(
            "the validation loss is {} after step {step} (epoch {epoch_no})",
            v.loss
        )))
    };

    let (mut trained_samples, mut step_seconds) = (0usize, 0f64);
    let total = settings.total_steps(n);
    let epochs = total.div_ceil(per_epoch.max(1));
    let accumulate = settings.gradient_accumulation_steps.max(1) as u64;
    let step_rows = settings.rows_per_step();
    let finished = |run: &Run| {
        run.step >= total
            || settings
                .early_stopping_patience
                .is_some_and(|p| stops_early(&run.history, p))
    };
    'epochs: for epoch in epoch0..epochs {
        if finished(&run) {
            // A resumed run that had reached its end.
            break;
        }
        let epoch_no = epoch as u32 + 1;
        let order = epoch_permutation(settings.seed, epoch, n);
        let start = if epoch == epoch0 { batch0 } else { 0 };
        observer.on(Event::EpochStarted {
            epoch: epoch_no,
            epochs: epochs as usize,
            batches: per_epoch,
            first_batch: start,
        });
        for b in start..per_epoch {
            let rows = &order[b as usize * step_rows..((b as usize + 1) * step_rows).min(n)];
            let t0 = Instant::now();
            let lr = schedule.lr(run.step);
            let at = format!("step {} (epoch {epoch_no}, batch {})", run.step + 1, b + 1);
            // Each batch's mean loss weighted by its share of the step's rows: the gradients
            // add up to those of the mean loss over all of them, as one batch would give.
            let (mut grads, mut loss_value) = (None, 0f64);
            for (k, batch) in rows.chunks(bs).enumerate() {
                let (ids, mask) = train.inputs(batch, device)?;
                let labels = train.labels(batch, device)?;
                let mode = Mode::Train {
                    dropout_seed: dropout_seed(settings.seed, run.step * accumulate + k as u64),
                };
                let logits = model.forward(&ids, &mask, mode)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
                let value = loss.to_scalar::<f32>()? as f64;
                if !value.is_finite() {
                    return Err(stop(format!("the training loss is {value} at {at}")));
                }
                let share = batch.len() as f64 / rows.len() as f64;
                loss_value += value * share;
                let these = if share == 1.0 {
                    loss.backward()?
                } else {
                    (loss * share)?.backward()?
                };
                grads = Some(match grads {
                    None => these,
                    Some(sum) => add_grads(sum, &these, &run.vars)?,
                });
            }
            let mut grads = grads.context("a step with no rows")?;
            let gradients = run.vars.iter().map(|v| grads.get(v.as_tensor()).cloned());
            if let Some(name) = first_non_finite(&run.names, gradients)? {
                return Err(stop(format!(
                    "the gradient of {name} is NaN or infinite at {at}"
                )));
            }
            if let Some(max_norm) = settings.max_grad_norm {
                clip_grad_norm(&mut grads, &run.vars, max_norm)?;
            }
            run.optimizer.step(&grads, lr)?;
            let values = run.vars.iter().map(|v| Some(v.as_tensor().clone()));
            if let Some(name) = first_non_finite(&run.names, values)? {
                return Err(stop(format!(
                    "parameter {name} is NaN or infinite after {at}"
                )));
            }
            run.step += 1;
            let seconds = t0.elapsed().as_secs_f64();
            let samples_per_s = rows.len() as f64 / seconds.max(1e-9);
            trained_samples += rows.len();
            step_seconds += seconds;
            run.history.push(Record {
                kind: RecordKind::Step,
                epoch: epoch_no,
                step: run.step,
                train_loss: loss_value,
                learning_rate: Some(lr),
                samples_per_s: Some(samples_per_s),
                val_loss: None,
                val_accuracy: None,
            });
            observer.on(Event::Step(run.history.last().expect("just pushed")));

            let step = run.step;
            let position = |epoch, batch, run: &Run| Position {
                global_step: step,
                epoch,
                batch,
                optimizer_steps: run.optimizer.steps(),
            };
            // The epoch ends at its last batch, or where the run ends (max_steps).
            let mut epoch_end = b + 1 == per_epoch || step >= total;
            let mid_eval = settings
                .eval_every_steps
                .is_some_and(|k| step.is_multiple_of(k));
            if epoch_end || mid_eval {
                let kind = if epoch_end {
                    RecordKind::Epoch
                } else {
                    RecordKind::Eval
                };
                let v = run.validate(kind, epoch_no, validation, bs, device, observer)?;
                check_validation(&v, step, epoch_no)?;
                if finished(&run) && !epoch_end {
                    // Stopped early mid-epoch: this validation closes the run's last epoch.
                    run.history.last_mut().expect("just pushed").kind = RecordKind::Epoch;
                    epoch_end = true;
                }
                observer.on(Event::Validated(run.history.last().expect("just pushed")));
            }
            let checkpoint = if epoch_end {
                if settings.keep_best
                    && best_and_last(&run.history).is_some_and(|(b, _)| b.epoch == epoch_no)
                {
                    run.best = copies(&run.vars)?;
                }
                Some(position(epoch + 1, 0, &run))
            } else {
                step.is_multiple_of(settings.checkpoint_every_steps)
                    .then(|| position(epoch, b + 1, &run))
            };
            if let Some(position) = checkpoint {
                let dir = store.write(&run.snapshot(position)?)?;
                observer.on(Event::CheckpointWritten { dir: &dir, step });
            }
            if epoch_end && finished(&run) {
                observer.on(Event::EpochFinished { epoch: epoch_no });
                break 'epochs;
            }
        }
        observer.on(Event::EpochFinished { epoch: epoch_no });
    }

    let (best_row, last_row) = best_and_last(&run.history).context("training ran no epoch")?;
    let (best_epoch, best, last) = (
        best_row.epoch,
        validation_of(best_row),
        validation_of(last_row),
    );
    let mut adapter_epoch = last_row.epoch;
    if settings.keep_best && best_epoch != adapter_epoch && run.best.len() == run.vars.len() {
        for (var, t) in run.vars.iter().zip(&run.best) {
            var.set(t)?;
        }
        adapter_epoch = best_epoch;
    }
    Ok(TrainOutcome {
        steps: run.step,
        best_epoch,
        best,
        last,
        adapter_epoch,
        samples_per_s: if step_seconds > 0.0 {
            trained_samples as f64 / step_seconds
        } else {
            0.0
        },
        wall_time_s: started.elapsed().as_secs_f64(),
        resumed_from_step,
        history: run.history,
    })
}
