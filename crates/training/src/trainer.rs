//! The training loop: shuffled mini-batches, mean cross-entropy, backward, clipping, an
//! optimizer step on the scheduled learning rate; validation, history and checkpoints. What
//! happens is reported to an [`Observer`].

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use lora_classifier::{Mode, SequenceClassifier};

use crate::checkpoint::{CheckpointStore, Position, Snapshot};
use crate::clip::clip_grad_norm;
use crate::history::{best_and_last, epoch_mean_loss, Record, RecordKind};
use crate::observer::{Event, Observer, Skipped};
use crate::optim::{Optimizer, OptimizerSettings, OptimizerState};
use crate::schedule::{warmup_steps, Schedule, ScheduleKind};
use crate::seeds::{dropout_seed, epoch_permutation};
use inference::{infer, Examples};

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

/// Mean cross-entropy and accuracy over `examples`, in batches, without dropout or autograd,
/// with the adapter merged for the duration, as the evaluate stage runs it
/// ([`SequenceClassifier::with_merged`]: no LoRA branch per layer, 1.25× the throughput with
/// all-linear LoRA on a Zen 4; the trained weights come back untouched). Validation in
/// [`train`] is this.
pub fn evaluate(
    model: &mut SequenceClassifier,
    examples: &Examples,
    batch_size: usize,
    device: &Device,
) -> Result<Validation> {
    evaluate_with_progress(model, examples, batch_size, device, |_, _| {})
}

/// [`evaluate`], calling `progress(done, total)` with the rows classified after each batch.
pub fn evaluate_with_progress(
    model: &mut SequenceClassifier,
    examples: &Examples,
    batch_size: usize,
    device: &Device,
    progress: impl FnMut(u64, u64),
) -> Result<Validation> {
    if examples.is_empty() {
        bail!("cannot validate on an empty split");
    }
    model.with_merged(|model| {
        mean_loss_and_accuracy(model, examples, batch_size, device, progress)
    })?
}

fn mean_loss_and_accuracy(
    model: &SequenceClassifier,
    examples: &Examples,
    batch_size: usize,
    device: &Device,
    mut progress: impl FnMut(u64, u64),
) -> Result<Validation> {
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
    model: &'a mut SequenceClassifier,
    names: Vec<String>,
    vars: Vec<Var>,
    optimizer: Optimizer,
    /// Optimizer steps done (the schedule's position).
    step: u64,
    history: Vec<Record>,
    /// The trainable tensors of the best epoch so far (kept only for `keep_best`).
    best: Vec<Tensor>,
}

impl<'a> Run<'a> {
    /// A run at its beginning: the model's trainable tensors as they are, a fresh optimizer.
    fn new(model: &'a mut SequenceClassifier, settings: &TrainSettings) -> Result<Self> {
        let params = model.trainable();
        Ok(Self {
            model,
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            vars: params.iter().map(|(_, v)| v.clone()).collect(),
            optimizer: Optimizer::new(settings.optimizer, params)?,
            step: 0,
            history: Vec::new(),
            best: Vec::new(),
        })
    }

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
/// reports what happens to `observer`. The steps: [`Loop::resume_or_start`], then
/// [`Loop::epoch`] for each epoch left (each optimizer step followed by
/// [`Loop::validate_if_due`] and [`Loop::checkpoint_if_due`]), then [`Loop::finish`].
/// Validation merges the adapter for its duration (`SequenceClassifier::with_merged`), hence
/// `&mut`; the model ends holding the trained adapter, unmerged.
pub fn train(
    model: &mut SequenceClassifier,
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
    let mut run = Run::new(model, settings)?;
    let course = Loop::new(train, validation, settings, device, store);
    let start = course.resume_or_start(&mut run, observer)?;
    let mut throughput = Throughput::default();
    for epoch in start.epoch..course.epochs {
        if course.finished(&run) {
            // A resumed run that had reached its end.
            break;
        }
        let first_batch = if epoch == start.epoch { start.batch } else { 0 };
        let ended = course.epoch(&mut run, epoch, first_batch, &mut throughput, observer)?;
        observer.on(Event::EpochFinished {
            epoch: epoch as u32 + 1,
        });
        if ended {
            break;
        }
    }
    course.finish(run, &throughput, start.resumed_from_step, started)
}

/// What a run works with and toward: its data, settings and checkpoints, and the step counts
/// and schedule derived from them. It does not change while the run goes.
struct Loop<'a> {
    train: &'a Examples<'a>,
    validation: &'a Examples<'a>,
    settings: &'a TrainSettings,
    device: &'a Device,
    store: &'a CheckpointStore,
    schedule: Schedule,
    /// Optimizer steps per epoch, and in the whole run.
    per_epoch: u64,
    total: u64,
    /// The epochs those steps span.
    epochs: u64,
}

/// Where a run begins: the 0-based epoch and its next batch.
struct Start {
    epoch: u64,
    batch: u64,
    resumed_from_step: Option<u64>,
}

/// The rows this process trained on and the seconds its steps took.
#[derive(Default)]
struct Throughput {
    samples: usize,
    seconds: f64,
}

impl<'a> Loop<'a> {
    fn new(
        train: &'a Examples<'a>,
        validation: &'a Examples<'a>,
        settings: &'a TrainSettings,
        device: &'a Device,
        store: &'a CheckpointStore,
    ) -> Self {
        let n = train.len();
        let per_epoch = settings.steps_per_epoch(n);
        let total = settings.total_steps(n);
        Self {
            train,
            validation,
            settings,
            device,
            store,
            schedule: settings.schedule_for(n),
            per_epoch,
            total,
            epochs: total.div_ceil(per_epoch.max(1)),
        }
    }

    /// Restores `run` from the newest usable checkpoint of this run, if any (after removing
    /// leftovers of killed writes); else it starts from the beginning.
    fn resume_or_start(&self, run: &mut Run, observer: &mut dyn Observer) -> Result<Start> {
        self.store.clean_partial()?;
        let mut unusable_skipped = 0;
        let latest = self.store.latest(self.device, |path, why| {
            unusable_skipped += matches!(why, Skipped::Unusable(_)) as usize;
            observer.on(Event::CheckpointSkipped { path, why });
        })?;
        let Some((path, snap)) = latest else {
            observer.on(Event::Started { unusable_skipped });
            return Ok(Start {
                epoch: 0,
                batch: 0,
                resumed_from_step: None,
            });
        };
        let position = snap.position.clone();
        run.restore(snap)
            .with_context(|| format!("resuming from {}", path.display()))?;
        observer.on(Event::Resumed {
            path: &path,
            position: &position,
            batches: self.per_epoch,
        });
        Ok(Start {
            epoch: position.epoch,
            batch: position.batch,
            resumed_from_step: Some(run.step),
        })
    }

    /// Whether the run is done: all its steps taken, or stopped early.
    fn finished(&self, run: &Run) -> bool {
        run.step >= self.total
            || self
                .settings
                .early_stopping_patience
                .is_some_and(|p| stops_early(&run.history, p))
    }

    /// The error that stops a run. A non-finite loss, gradient, parameter or validation loss
    /// stops it: training on would only spread the NaN, and nothing of it may be saved as an
    /// adapter. Checkpoints written before it stay (they hold finite state; resuming skips
    /// any that do not).
    fn stop(&self, what: String) -> anyhow::Error {
        let kept = match self.store.latest_path() {
            Ok(Some(p)) => format!("the last good checkpoint, {}, is kept", p.display()),
            _ => "no checkpoint was written yet".to_string(),
        };
        anyhow::anyhow!(
            "{what}: stopping without saving an adapter; {kept}. Lower the learning rate, or \
             clip the gradient norm"
        )
    }

    /// Epoch `epoch` (0-based) from batch `first_batch`: each optimizer step, recorded, then
    /// the validation and checkpoint due after it. Returns whether the run ended in it.
    fn epoch(
        &self,
        run: &mut Run,
        epoch: u64,
        first_batch: u64,
        throughput: &mut Throughput,
        observer: &mut dyn Observer,
    ) -> Result<bool> {
        let n = self.train.len();
        let epoch_no = epoch as u32 + 1;
        let step_rows = self.settings.rows_per_step();
        let order = epoch_permutation(self.settings.seed, epoch, n);
        observer.on(Event::EpochStarted {
            epoch: epoch_no,
            epochs: self.epochs as usize,
            batches: self.per_epoch,
            first_batch,
        });
        for b in first_batch..self.per_epoch {
            let rows = &order[b as usize * step_rows..((b as usize + 1) * step_rows).min(n)];
            let t0 = Instant::now();
            let lr = self.schedule.lr(run.step);
            let at = format!("step {} (epoch {epoch_no}, batch {})", run.step + 1, b + 1);
            let loss = self.optimizer_step(run, rows, lr, &at)?;
            let seconds = t0.elapsed().as_secs_f64();
            throughput.samples += rows.len();
            throughput.seconds += seconds;
            run.history.push(Record {
                kind: RecordKind::Step,
                epoch: epoch_no,
                step: run.step,
                train_loss: loss,
                learning_rate: Some(lr),
                samples_per_s: Some(rows.len() as f64 / seconds.max(1e-9)),
                val_loss: None,
                val_accuracy: None,
            });
            observer.on(Event::Step(run.history.last().expect("just pushed")));
            let epoch_end = self.validate_if_due(run, epoch_no, b, observer)?;
            self.checkpoint_if_due(run, epoch, b, epoch_end, observer)?;
            if epoch_end && self.finished(run) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One optimizer step on `rows` at learning rate `lr` (`at` names it in errors): the
    /// batches' forward and backward passes, their gradients added up, clipped, and the
    /// optimizer's update; a non-finite loss, gradient or parameter stops the run. Returns
    /// the step's loss.
    fn optimizer_step(&self, run: &mut Run, rows: &[usize], lr: f64, at: &str) -> Result<f64> {
        let settings = self.settings;
        let accumulate = settings.gradient_accumulation_steps.max(1) as u64;
        // Each batch's mean loss weighted by its share of the step's rows: the gradients add
        // up to those of the mean loss over all of them, as one batch would give.
        let (mut grads, mut loss_value) = (None, 0f64);
        for (k, batch) in rows.chunks(settings.batch_size).enumerate() {
            let (ids, mask) = self.train.inputs(batch, self.device)?;
            let labels = self.train.labels(batch, self.device)?;
            let seed = dropout_seed(settings.seed, run.step * accumulate + k as u64);
            let share = batch.len() as f64 / rows.len() as f64;
            // The hand-written backward pass where it applies (see `train_grads`), else autograd.
            let (value, these) = match run.model.train_grads(&ids, &mask, &labels, seed, share)? {
                Some(g) => (g.loss.to_scalar::<f32>()? as f64, g.into_grad_store()),
                None => {
                    let mode = Mode::Train { dropout_seed: seed };
                    let logits = run.model.forward(&ids, &mask, mode)?;
                    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
                    let value = loss.to_scalar::<f32>()? as f64;
                    let grads = if share == 1.0 {
                        loss.backward()?
                    } else {
                        (loss * share)?.backward()?
                    };
                    (value, grads)
                }
            };
            if !value.is_finite() {
                return Err(self.stop(format!("the training loss is {value} at {at}")));
            }
            loss_value += value * share;
            grads = Some(match grads {
                None => these,
                Some(sum) => add_grads(sum, &these, &run.vars)?,
            });
        }
        let mut grads = grads.context("a step with no rows")?;
        let gradients = run.vars.iter().map(|v| grads.get(v.as_tensor()).cloned());
        if let Some(name) = first_non_finite(&run.names, gradients)? {
            return Err(self.stop(format!("the gradient of {name} is NaN or infinite at {at}")));
        }
        if let Some(max_norm) = settings.max_grad_norm {
            clip_grad_norm(&mut grads, &run.vars, max_norm)?;
        }
        run.optimizer.step(&grads, lr)?;
        let values = run.vars.iter().map(|v| Some(v.as_tensor().clone()));
        if let Some(name) = first_non_finite(&run.names, values)? {
            return Err(self.stop(format!("parameter {name} is NaN or infinite after {at}")));
        }
        run.step += 1;
        Ok(loss_value)
    }

    /// After batch `b` of epoch `epoch_no` (1-based): validates where due (the epoch's end,
    /// which is also where the run ends, or every `eval_every_steps` steps) and, at an
    /// epoch's end, keeps the adapter if its epoch is the best so far. Returns whether the
    /// epoch ended (an early stop mid-epoch ends it).
    fn validate_if_due(
        &self,
        run: &mut Run,
        epoch_no: u32,
        b: u64,
        observer: &mut dyn Observer,
    ) -> Result<bool> {
        let (settings, step) = (self.settings, run.step);
        // The epoch ends at its last batch, or where the run ends (max_steps).
        let mut epoch_end = b + 1 == self.per_epoch || step >= self.total;
        let mid_eval = settings
            .eval_every_steps
            .is_some_and(|k| step.is_multiple_of(k));
        if epoch_end || mid_eval {
            let kind = if epoch_end {
                RecordKind::Epoch
            } else {
                RecordKind::Eval
            };
            let (bs, device) = (settings.batch_size, self.device);
            let v = run.validate(kind, epoch_no, self.validation, bs, device, observer)?;
            if !v.loss.is_finite() {
                return Err(self.stop(format!(
                    "the validation loss is {} after step {step} (epoch {epoch_no})",
                    v.loss
                )));
            }
            if self.finished(run) && !epoch_end {
                // Stopped early mid-epoch: this validation closes the run's last epoch.
                run.history.last_mut().expect("just pushed").kind = RecordKind::Epoch;
                epoch_end = true;
            }
            observer.on(Event::Validated(run.history.last().expect("just pushed")));
        }
        if epoch_end
            && settings.keep_best
            && best_and_last(&run.history).is_some_and(|(b, _)| b.epoch == epoch_no)
        {
            run.best = copies(&run.vars)?;
        }
        Ok(epoch_end)
    }

    /// After batch `b` of epoch `epoch` (0-based): writes a checkpoint at the epoch's end
    /// (resuming at the next epoch) and every `checkpoint_every_steps` steps.
    fn checkpoint_if_due(
        &self,
        run: &Run,
        epoch: u64,
        b: u64,
        epoch_end: bool,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let step = run.step;
        let next = if epoch_end {
            Some((epoch + 1, 0))
        } else {
            step.is_multiple_of(self.settings.checkpoint_every_steps)
                .then_some((epoch, b + 1))
        };
        if let Some((epoch, batch)) = next {
            let position = Position {
                global_step: step,
                epoch,
                batch,
                optimizer_steps: run.optimizer.steps(),
            };
            let dir = self.store.write(&run.snapshot(position)?)?;
            observer.on(Event::CheckpointWritten { dir: &dir, step });
        }
        Ok(())
    }

    /// The outcome of a run that ended: its best and last validations, and the kept adapter
    /// (the best epoch's, for `keep_best`) set into the model.
    fn finish(
        &self,
        run: Run,
        throughput: &Throughput,
        resumed_from_step: Option<u64>,
        started: Instant,
    ) -> Result<TrainOutcome> {
        let (best_row, last_row) = best_and_last(&run.history).context("training ran no epoch")?;
        let (best_epoch, best, last) = (
            best_row.epoch,
            validation_of(best_row),
            validation_of(last_row),
        );
        let mut adapter_epoch = last_row.epoch;
        if self.settings.keep_best
            && best_epoch != adapter_epoch
            && run.best.len() == run.vars.len()
        {
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
            samples_per_s: if throughput.seconds > 0.0 {
                throughput.samples as f64 / throughput.seconds
            } else {
                0.0
            },
            wall_time_s: started.elapsed().as_secs_f64(),
            resumed_from_step,
            history: run.history,
        })
    }
}
