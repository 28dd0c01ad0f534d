//! The train stage: LoRA fine-tuning of the model on the tokenized reviews.
//!
//! Reads `tokens/{train,validation}.safetensors` and the model (`model.source`), trains with
//! the `lora` and `training` settings, and writes `train/adapter/` (PEFT format),
//! `history.parquet` and `summary.json`. Resumable checkpoints go to
//! `checkpoints/train/` and are removed once the outputs are committed.

pub mod cli;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lora_classifier::{Checkpoint, LoraBias, LoraSettings, SequenceClassifier};
use pipeline::atomic::{self, StagingDir};
use pipeline::config::LoraBiasSetting;
use pipeline::history::{self, HISTORY_FILE};
use pipeline::stamp::{self, Freshness, StageRun};
use pipeline::tokens::TokenSplit;
use pipeline::train_summary::{TrainSummary, SUMMARY_FILE};
use pipeline::{hub, Config, Layout, Split, StageId};
use training::{CheckpointStore, TrainSettings};

/// The folder of the saved adapter inside `train/`.
pub const ADAPTER_DIR: &str = "adapter";

/// Test hook: after writing the checkpoint of this optimizer step, the process stops in
/// place (sleeps) so that a test can SIGKILL it at a known point of the run.
pub const HANG_AFTER_CHECKPOINT_ENV: &str = "TRAIN_TEST_HANG_AFTER_CHECKPOINT";

#[derive(Debug)]
pub enum Outcome {
    UpToDate {
        dir: PathBuf,
    },
    Ran {
        dir: PathBuf,
        reason: String,
        summary: Box<TrainSummary>,
    },
}

fn lora_settings(config: &Config) -> LoraSettings {
    let l = &config.lora;
    LoraSettings {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        bias: match l.bias {
            LoraBiasSetting::None => LoraBias::None,
            LoraBiasSetting::All => LoraBias::All,
            LoraBiasSetting::LoraOnly => LoraBias::LoraOnly,
        },
        // Empty = the architecture's default.
        target_modules: l.target_modules.clone().unwrap_or_default(),
        layer_norm: l.layer_norm,
        use_rslora: l.use_rslora,
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
    if split.max_len > ckpt.max_positions() {
        bail!(
            "{} has {} tokens per review, beyond the model's {} positions: lower model.max_len",
            path.display(),
            split.max_len,
            ckpt.max_positions()
        );
    }
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

/// Runs the stage.
pub fn run(config: &Config, force: bool) -> Result<Outcome> {
    let layout = Layout::new(&config.artifacts);
    let mut stage = StageRun::new(&layout, StageId::Train, config);
    let token_files = [Split::Train, Split::Validation].map(Layout::tokens_file);
    stage.upstream(
        &layout,
        config,
        StageId::Tokenize,
        &[&token_files[0], &token_files[1]],
    )?;
    let model = &config.model;
    let model_dir = hub::model_dir(&model.source, &model.revision, true, false)?;
    let mut inputs = BTreeMap::new();
    for (name, path) in pipeline::hub::model_files(&model_dir)? {
        let hash =
            stamp::hash_file(&path).with_context(|| format!("hashing {}", path.display()))?;
        stage.input_hash(&name, hash.clone());
        inputs.insert(name, hash);
    }
    let reason = match stage.freshness()? {
        Freshness::UpToDate if !force => return Ok(Outcome::UpToDate { dir: stage.dir }),
        Freshness::UpToDate => "--force".to_string(),
        Freshness::Stale(reason) => reason,
    };

    // Every check before any training.
    let (device, device_name) = training::device::select_device(&config.training.device)?;
    let dtype = training::device::select_dtype(&config.training.dtype, &device)?;
    let ckpt = Checkpoint::open(&model_dir)?;
    if model.max_len > ckpt.max_positions() {
        bail!(
            "model.max_len {} is beyond the {} positions of the model {:?}: lower model.max_len and rerun `just tokenize`",
            model.max_len,
            ckpt.max_positions(),
            model.source
        );
    }
    let tokens_dir = layout.stage_dir(StageId::Tokenize);
    let read = |file: &str| -> Result<TokenSplit> {
        let path = tokens_dir.join(file);
        let split = TokenSplit::read(&path)?;
        check_split(&split, &path, &ckpt, &model.source)?;
        Ok(split)
    };
    let (train_split, validation_split) = (read(&token_files[0])?, read(&token_files[1])?);
    let classifier = SequenceClassifier::new(
        &ckpt,
        Some(&lora_settings(config)),
        config.seed,
        &device,
        dtype,
    )
    .context("adding LoRA to the model (the lora.* keys)")?;
    let counts = classifier.parameter_counts();
    let threads = candle_core::utils::get_num_threads();
    println!("train: {counts}");
    println!(
        "train: device {device_name}, frozen weights {}, {threads} CPU threads; {} training and {} validation reviews",
        training::device::dtype_name(dtype),
        train_split.len(),
        validation_split.len()
    );

    // Checkpoints resume only the same run: same config keys, inputs and program build
    // (another build may compute differently, breaking the bitwise-resume guarantee).
    let token_hashes = stamp::read_stamp(&tokens_dir)?
        .map(|s| s.outputs)
        .unwrap_or_default();
    let fingerprint = stamp::hash_bytes(
        serde_json::json!({
            "program": stamp::program_version(),
            "config": config.sections(StageId::Train.config_keys()),
            "model": inputs,
            "tokens": token_hashes,
        })
        .to_string()
        .as_bytes(),
    );
    let store = CheckpointStore::new(&layout.train_checkpoints(), &fingerprint);
    let hang_after: Option<u64> = std::env::var(HANG_AFTER_CHECKPOINT_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut after_checkpoint = |dir: &Path, step: u64| {
        if hang_after == Some(step) {
            println!(
                "train: wrote {}; stopping here ({HANG_AFTER_CHECKPOINT_ENV})",
                dir.display()
            );
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let settings = TrainSettings::from_config(config.seed, &config.training);
    let outcome = training::train(
        &classifier,
        &train_split,
        &validation_split,
        &settings,
        &device,
        &store,
        &mut after_checkpoint,
    )?;

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
        device: device_name,
        dtype: training::device::dtype_name(dtype).into(),
        threads,
        resumed_from_step: outcome.resumed_from_step,
    };
    let staged = StagingDir::new(&stage.dir)?;
    classifier.save_adapter(&staged.path().join(ADAPTER_DIR))?;
    history::write_parquet(&outcome.history, &staged.path().join(HISTORY_FILE))?;
    atomic::write_json(&staged.path().join(SUMMARY_FILE), &summary)?;
    stage.write_stamp(staged.path())?;
    let dir = staged.commit()?;
    store.remove_all()?;
    Ok(Outcome::Ran {
        dir,
        reason,
        summary: Box::new(summary),
    })
}
