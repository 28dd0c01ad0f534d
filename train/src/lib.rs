//! The train stage: LoRA fine-tuning of the model on the tokenized reviews.
//!
//! Reads `tokens/{train,validation}.safetensors` and the model (`model.source`), trains with
//! the `lora` and `training` settings, and writes `train/adapter/` (PEFT format),
//! `history.parquet` and `summary.json`. Resumable checkpoints go to
//! `checkpoints/train/` and are removed once the outputs are committed.

pub mod cli;
mod console;
pub mod settings;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device};
use inference::device::{dtype_name, select_device, select_dtype};
use inference::Examples;
use lora_classifier::{Checkpoint, SequenceClassifier};
pub use pipeline::graph::ADAPTER_DIR;
use pipeline::history::{self, HISTORY_FILE};
pub use pipeline::runner::Outcome;
use pipeline::runner::{self, Context, Inputs, Recorded, Stage, StageInputs};
use pipeline::sources::{self, SourceFiles};
use pipeline::stamp;
use pipeline::tokens::TokenSplit;
use pipeline::train_summary::{TrainSummary, SUMMARY_FILE};
use pipeline::{Config, Split, StageId};
use text_encoder::check_max_len;
use training::{CheckpointStore, JsonLog, LOG_FILE};

pub use console::CheckpointHook;
use console::Console;

/// The source identity of this stage's code (its build script computes it).
pub const CODE: &str = env!("STAGE_IDENTITY");

/// The stage. What it resolves when it says where its inputs are (model folder, device,
/// dtype) is kept for the run.
pub struct Train<'a> {
    after_checkpoint: Option<CheckpointHook<'a>>,
    model_dir: PathBuf,
    device: Device,
    device_name: String,
    dtype: DType,
    store: Option<CheckpointStore>,
}

impl Default for Train<'_> {
    fn default() -> Self {
        Self {
            after_checkpoint: None,
            model_dir: PathBuf::new(),
            device: Device::Cpu,
            device_name: String::new(),
            dtype: DType::F32,
            store: None,
        }
    }
}

impl<'a> Train<'a> {
    /// Calls `hook` with each checkpoint's folder and step after it is written.
    pub fn after_checkpoint(hook: CheckpointHook<'a>) -> Self {
        Self {
            after_checkpoint: Some(hook),
            ..Self::default()
        }
    }
}

/// Checks a token split against the model before any training.
fn check_split(
    split: &TokenSplit,
    path: &Path,
    ckpt: &Checkpoint,
    model_source: &str,
) -> Result<()> {
    if split.is_empty() {
        bail!("{} holds no examples: check the data settings and rerun `just data-prep` and `just tokenize`", path.display());
    }
    // The tokens' width is the model.max_len they were made with (a stale one is refused
    // before this, naming the stage to rerun).
    check_max_len(
        split.max_len,
        ckpt.max_positions(),
        &format!("{model_source:?}"),
    )?;
    let vocab = ckpt.vocab_size();
    if let Some(&bad) = split.input_ids.iter().find(|&&id| id as usize >= vocab) {
        bail!(
            "{} holds token id {bad}, beyond the vocabulary of the model ({vocab} tokens): the \
             tokens were made with the tokenizer of {:?}, which does not belong to the model {model_source:?}; \
             rerun `just tokenize`",
            path.display(),
            split.tokenizer
        );
    }
    if let Some(&bad) = split
        .labels
        .iter()
        .find(|&&l| l as usize >= ckpt.num_labels())
    {
        bail!(
            "{} holds label {bad}; the model has {} labels",
            path.display(),
            ckpt.num_labels()
        );
    }
    Ok(())
}

impl StageInputs for Train<'_> {
    fn id(&self) -> StageId {
        StageId::Train
    }

    fn code(&self) -> &'static str {
        CODE
    }

    fn inputs(&mut self, ctx: &Context) -> Result<Inputs> {
        let training = &ctx.config.training;
        self.model_dir = sources::model_dir(self.id(), ctx.config)?;
        let mut inputs = Inputs {
            sources: vec![SourceFiles::model(&self.model_dir)?],
            ..Inputs::default()
        };
        (self.device, self.device_name) =
            select_device(training.device).context("training.device")?;
        self.dtype = select_dtype(training.dtype, &self.device);
        // The kind of device decides the numbers, not which one of a kind.
        let kind = if self.device.is_cpu() { "cpu" } else { "cuda" };
        inputs.runtime.insert("device".into(), kind.into());
        inputs
            .runtime
            .insert("dtype".into(), dtype_name(self.dtype).into());
        Ok(inputs)
    }
}

impl Stage for Train<'_> {
    type Summary = TrainSummary;

    fn run(&mut self, ctx: &Context, inputs: &Recorded, out: &Path) -> Result<TrainSummary> {
        let (config, model) = (ctx.config, &ctx.config.model);
        // Every check before any training.
        let ckpt = Checkpoint::open(&self.model_dir)?;
        let read = |split: Split| -> Result<TokenSplit> {
            let path = ctx.artifact(StageId::Tokenize, pipeline::Layout::tokens_file(split));
            let tokens = TokenSplit::read(&path)?;
            check_split(&tokens, &path, &ckpt, &model.source)?;
            Ok(tokens)
        };
        let (train_split, validation_split) = (read(Split::Train)?, read(Split::Validation)?);
        let mut classifier = SequenceClassifier::new(
            &ckpt,
            Some(&settings::lora_settings(config)),
            config.seed,
            &self.device,
            self.dtype,
        )
        .context("adding LoRA to the model (the lora.* keys)")?;
        let counts = classifier.parameter_counts();
        let threads = candle_core::utils::get_num_threads();
        let runs_on = lora_classifier::runs_on(
            &self.device,
            lora_classifier::FrozenWeights::Float(self.dtype),
            lora_classifier::Kernels::from_env(),
        );
        println!("train: runs on {runs_on}");
        println!("train: {counts}");
        println!(
            "train: device {}, frozen weights {}, {threads} CPU threads; {} training and {} validation reviews",
            self.device_name,
            dtype_name(self.dtype),
            train_split.len(),
            validation_split.len()
        );

        // Checkpoints resume only the same run: same code, config keys, inputs and runtime
        // (another build or device may compute differently, breaking the bitwise resume).
        let token_hashes = stamp::read_stamp(&ctx.layout.stage_dir(StageId::Tokenize))?
            .map(|s| s.outputs)
            .unwrap_or_default();
        let fingerprint = stamp::hash_bytes(
            serde_json::json!({
                "code": CODE,
                "config": config.sections(StageId::Train.config_keys()),
                "model": inputs.sources,
                "runtime": inputs.runtime,
                "tokens": token_hashes,
            })
            .to_string()
            .as_bytes(),
        );
        let store = CheckpointStore::new(&ctx.layout.train_checkpoints(), &fingerprint);
        let settings = settings::train_settings(config);
        // The log lives beside the checkpoints while the run goes (a resumed run continues
        // it) and is part of the outputs at the end.
        let live_log = ctx.layout.train_checkpoints().join(LOG_FILE);
        println!("train: log → {} (JSON lines)", live_log.display());
        let mut console = Console::new(
            self.after_checkpoint.as_deref_mut(),
            JsonLog::new(&live_log),
        );
        let outcome = training::train(
            &mut classifier,
            &examples(&train_split),
            &examples(&validation_split),
            &settings,
            &self.device,
            &store,
            &mut console,
        )?;
        console.log.finish()?;
        std::fs::copy(&live_log, out.join(LOG_FILE))
            .with_context(|| format!("cannot copy {}", live_log.display()))?;

        classifier.save_adapter(&out.join(ADAPTER_DIR))?;
        history::write_parquet(&outcome.history, &out.join(HISTORY_FILE))?;
        let summary = TrainSummary {
            trainable_parameters: counts.trainable,
            total_parameters: counts.all,
            parameters_line: counts.to_string(),
            wall_time_s: outcome.wall_time_s,
            samples_per_s: outcome.samples_per_s,
            epochs: settings.epochs,
            steps: outcome.steps,
            train_samples: train_split.len(),
            validation_samples: validation_split.len(),
            best_epoch: outcome.best_epoch,
            kept: if settings.keep_best { "best" } else { "last" }.into(),
            adapter_epoch: outcome.adapter_epoch,
            final_val_loss: outcome.last.loss,
            final_val_accuracy: outcome.last.accuracy,
            best_val_loss: outcome.best.loss,
            best_val_accuracy: outcome.best.accuracy,
            device: self.device_name.clone(),
            dtype: dtype_name(self.dtype).into(),
            runs_on,
            threads,
            resumed_from_step: outcome.resumed_from_step,
            model_revision: model.revision.clone(),
            model_commit: hub::snapshot_commit(&self.model_dir),
        };
        pipeline::atomic::write_json(&out.join(SUMMARY_FILE), &summary)?;
        self.store = Some(store);
        Ok(summary)
    }

    fn describe(&self, s: &TrainSummary) -> Vec<String> {
        vec![format!(
            "{} steps in {:.1}s ({:.1} samples/s); best epoch {} (validation loss {:.4}, accuracy {:.4}); kept the {} epoch's adapter (epoch {})",
            s.steps, s.wall_time_s, s.samples_per_s, s.best_epoch, s.best_val_loss,
            s.best_val_accuracy, s.kept, s.adapter_epoch
        )]
    }

    /// The checkpoints served their run: the outputs are in place.
    fn committed(&mut self, _: &Context) -> Result<()> {
        match self.store.take() {
            Some(store) => store.remove_all(),
            None => Ok(()),
        }
    }
}

/// A token split as the training library takes it.
pub fn examples(split: &TokenSplit) -> Examples<'_> {
    Examples {
        input_ids: &split.input_ids,
        attention_mask: &split.attention_mask,
        labels: &split.labels,
        max_len: split.max_len,
    }
}

/// Runs the stage.
pub fn run(config: &Config, force: bool) -> Result<Outcome<TrainSummary>> {
    runner::execute(&mut Train::default(), config, force)
}
