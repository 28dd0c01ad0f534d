//! Evaluation and inference: load a base model with a LoRA adapter (merged
//! for speed), classify tokenized splits or new texts, and compute the
//! metrics as scikit-learn does.

pub mod cli;
pub mod predict_cli;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lora_classifier::{Checkpoint, Mode, SequenceClassifier};
use pipeline::atomic::{self, StagingDir};
use pipeline::cli::Progress;
use pipeline::config::EvaluateDtype;
use pipeline::encode::TextEncoder;
use pipeline::predictions::{self, ExamplePrediction, Predictions};
use pipeline::stamp::{self, Freshness, StageRun};
use pipeline::tokens::TokenSplit;
use pipeline::{Config, Layout, Split, StageId};

/// Which model and adapter to use; `None` = this run's (config and artifacts).
/// Also the `--model`/`--adapter` options of `evaluate` and `predict`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelChoice {
    /// A Hugging Face checkpoint folder (config.json + safetensors) to use instead of `model.source`.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to use
    /// instead of artifacts/train/adapter; one trained in Python with PEFT works too.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

/// A classifier ready for inference.
pub struct Classifier {
    pub model: SequenceClassifier,
    pub model_dir: PathBuf,
    pub adapter_dir: PathBuf,
    device: Device,
}

impl Classifier {
    /// Loads the base model and the adapter, and merges the adapter into the
    /// weights (one matmul per layer instead of three).
    pub fn load(config: &Config, choice: &ModelChoice) -> Result<Self> {
        let model_dir = resolve_model_dir(config, choice)?;
        let adapter_dir = match &choice.adapter {
            Some(dir) => dir.clone(),
            None => trained_adapter(config, &model_dir, choice.model.is_some())?,
        };
        Self::open(config, model_dir, adapter_dir)
    }

    /// Loads `adapter_dir` onto `model_dir` as they are (the caller checked that they belong
    /// together).
    fn open(config: &Config, model_dir: PathBuf, adapter_dir: PathBuf) -> Result<Self> {
        let (device, _) = training::device::select_device(&config.training.device)?;
        let int8 = config.evaluate.dtype == EvaluateDtype::Int8;
        if int8 && !device.is_cpu() {
            bail!(
                "evaluate.dtype is int8, which runs on the CPU only, but training.device selects \
                 {device:?}: set training.device to cpu or evaluate.dtype to auto"
            )
        }
        // int8 quantizes the merged f32 weights.
        let dtype = match int8 {
            true => DType::F32,
            false => training::device::select_dtype(&config.training.dtype, &device)?,
        };
        let checkpoint = Checkpoint::open(&model_dir)?;
        let mut model = SequenceClassifier::load_adapter(&checkpoint, &adapter_dir, &device, dtype)
            .with_context(|| {
                format!(
                    "loading adapter {} onto model {}",
                    adapter_dir.display(),
                    model_dir.display()
                )
            })?;
        model.merge()?;
        if int8 {
            model.quantize_int8()?;
        }
        Ok(Self {
            model,
            model_dir,
            adapter_dir,
            device,
        })
    }

    /// P(positive) for each row of `input_ids`/`attention_mask` ([n, max_len]).
    pub fn positive_probabilities(
        &self,
        input_ids: &[u32],
        attention_mask: &[u32],
        max_len: usize,
        batch_size: usize,
        mut progress: Option<&mut Progress>,
    ) -> Result<Vec<f64>> {
        let n = input_ids.len() / max_len;
        let mut probs = Vec::with_capacity(n);
        let started = Instant::now();
        for start in (0..n).step_by(batch_size) {
            let end = (start + batch_size).min(n);
            let rows = end - start;
            let mask = &attention_mask[start * max_len..end * max_len];
            // Padding is on the right and masked out as keys, so columns that are padding in
            // every row change nothing: drop them.
            let width = (0..max_len)
                .rev()
                .find(|&c| (0..rows).any(|r| mask[r * max_len + c] != 0))
                .map_or(1, |c| c + 1);
            let take = |v: &[u32]| -> Vec<u32> {
                (0..rows)
                    .flat_map(|r| {
                        v[(start + r) * max_len..(start + r) * max_len + width]
                            .iter()
                            .copied()
                    })
                    .collect()
            };
            let ids = Tensor::from_vec(take(input_ids), (rows, width), &self.device)?;
            let m = Tensor::from_vec(take(attention_mask), (rows, width), &self.device)?;
            let logits = self.model.forward(&ids, &m, Mode::Inference)?;
            let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
            // The loaders refuse non-finite weights, but finite ones can still overflow (f16,
            // absurd magnitudes): a NaN probability must not pass for an answer.
            if let Some(row) = logits.iter().position(|l| !l.iter().all(|x| x.is_finite())) {
                bail!(
                    "the model gave non-finite logits {:?} for review {}: its weights or \
                     activations overflow (with training.dtype f16, try f32 or bf16)",
                    logits[row],
                    start + row
                );
            }
            probs.extend(logits.iter().map(|l| positive_probability(l)));
            if let Some(p) = progress.as_deref_mut() {
                let rate = probs.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
                p.advance(rows as u64, &format!("{rate:.1} reviews/s"));
            }
        }
        Ok(probs)
    }

    /// Tokenizes and classifies new texts.
    pub fn classify_texts(
        &self,
        encoder: &TextEncoder,
        texts: &[String],
        batch_size: usize,
    ) -> Result<Vec<f64>> {
        let encoded = encoder.encode(texts)?;
        self.positive_probabilities(
            &encoded.input_ids,
            &encoded.attention_mask,
            encoder.max_len(),
            batch_size,
            None,
        )
    }
}

/// The checkpoint folder: `--model DIR`, else `model.source` (through the HF cache).
fn resolve_model_dir(config: &Config, choice: &ModelChoice) -> Result<PathBuf> {
    match &choice.model {
        Some(dir) => Ok(dir.clone()),
        None => pipeline::hub::model_dir(&config.model.source, &config.model.revision, true, false),
    }
}

/// This run's trained adapter (`artifacts/train/adapter`), after checking against the train
/// stage's stamp that it was trained for the model and `model.max_len` the config names now
/// (unless `--model` chose the model), that its files are those train wrote, and that the
/// model's files are those it was trained on: any other pairing gives answers that look right
/// and are not.
fn trained_adapter(config: &Config, model_dir: &Path, model_chosen: bool) -> Result<PathBuf> {
    let layout = Layout::new(&config.artifacts);
    let train_dir = layout.stage_dir(StageId::Train);
    let adapter = train_dir.join("adapter");
    let fix = "run `just train` to train one for it, or pass --adapter DIR";
    let stamp = stamp::read_stamp(&train_dir)
        .with_context(|| format!("the trained adapter cannot be trusted: {fix}"))?;
    let Some(stamp) = stamp.filter(|_| adapter.exists()) else {
        bail!(
            "no trained adapter at {}: run `just train` first, or pass --adapter DIR",
            adapter.display()
        );
    };
    let keys: &[&str] = if model_chosen {
        &["model.max_len"]
    } else {
        &["model.source", "model.revision", "model.max_len"]
    };
    let now = config.sections(keys);
    for key in keys {
        let then = stamp.config.get(*key);
        if then != Some(&now[*key]) {
            bail!(
                "the trained adapter {} was trained with {key} = {}, but the config now says {}: \
                 {fix}",
                adapter.display(),
                then.map_or("(not recorded)".to_string(), |v| v.to_string()),
                now[*key]
            );
        }
    }
    if let Some(reason) = stamp.damage(&train_dir)? {
        bail!("{} is incomplete ({reason}): {fix}", train_dir.display());
    }
    let mut hashes = BTreeMap::new();
    for (name, path) in pipeline::hub::model_files(model_dir)? {
        let hash = stamp::hash_file(&path).with_context(|| format!("hashing {name}"))?;
        hashes.insert(name, hash);
    }
    check_model_is_the_trained_one(&stamp, &hashes, model_dir)?;
    Ok(adapter)
}

/// This run's adapter was trained on the model whose files the train stamp records: the
/// upstream check covers train's config and outputs, not its inputs, so a model whose files
/// changed since (same `model.source`, new weights) would silently get an adapter trained on
/// other weights.
fn check_model_is_the_trained_one(
    trained: &stamp::Stamp,
    hashes: &BTreeMap<String, String>,
    model_dir: &Path,
) -> Result<()> {
    for (name, hash) in trained
        .inputs
        .iter()
        .filter(|(k, _)| k.starts_with("model/"))
    {
        if hashes.get(name) != Some(hash) {
            bail!(
                "the model's {} changed since `train` ran (model {}): the adapter was trained \
                 on other weights; run `just train` first",
                name.trim_start_matches("model/"),
                model_dir.display()
            );
        }
    }
    Ok(())
}

/// softmax(logits)[1] for two logits, computed stably in f64.
fn positive_probability(logits: &[f32]) -> f64 {
    let d = logits[0] as f64 - logits[1] as f64;
    1.0 / (1.0 + d.exp())
}

/// The tokenizer of the configured model, set up as the tokenize stage did.
pub fn encoder_for(config: &Config, model_dir: Option<&Path>) -> Result<TextEncoder> {
    let dir = match model_dir {
        Some(dir) => dir.to_path_buf(),
        None => {
            pipeline::hub::model_dir(&config.model.source, &config.model.revision, false, true)?
        }
    };
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        bail!(
            "{} is missing: the model folder needs its tokenizer",
            path.display()
        );
    }
    TextEncoder::from_file(&path, config.model.max_len)
}

/// What `evaluate` did.
#[derive(Debug)]
pub enum Outcome {
    UpToDate(PathBuf),
    Evaluated {
        dir: PathBuf,
        metrics: Box<metrics::Metrics>,
        reviews_per_s: f64,
    },
}

/// The evaluate stage: predictions and metrics for the test split (and the
/// validation split when `evaluate.validation` is set) → artifacts/evaluate.
pub fn run(config: &Config, choice: &ModelChoice, force: bool) -> Result<Outcome> {
    let layout = Layout::new(&config.artifacts);
    let mut splits = vec![Split::Test];
    if config.evaluate.validation {
        splits.push(Split::Validation);
    }
    let mut stage = StageRun::new(&layout, StageId::Evaluate, config);
    let token_files: Vec<String> = splits.iter().map(|&s| Layout::tokens_file(s)).collect();
    let data_files: Vec<String> = splits.iter().map(|&s| Layout::data_file(s)).collect();
    stage.upstream(
        &layout,
        config,
        StageId::Tokenize,
        &token_files.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    stage.upstream(
        &layout,
        config,
        StageId::DataPrep,
        &data_files.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    match &choice.adapter {
        None => stage.upstream(
            &layout,
            config,
            StageId::Train,
            &[
                "adapter/adapter_config.json",
                "adapter/adapter_model.safetensors",
            ],
        )?,
        Some(dir) => {
            for file in ["adapter_config.json", "adapter_model.safetensors"] {
                stage.input_file(&format!("adapter/{file}"), &dir.join(file))?;
            }
        }
    }
    // Hash the model's files, and load it only when there is work to do.
    let model_dir = resolve_model_dir(config, choice)?;
    let mut model_hashes = BTreeMap::new();
    for (name, path) in pipeline::hub::model_files(&model_dir)? {
        if path.exists() {
            let hash = stamp::hash_file(&path).with_context(|| format!("hashing input {name}"))?;
            stage.input_hash(&name, hash.clone());
            model_hashes.insert(name, hash);
        }
    }
    if choice.adapter.is_none() {
        // The upstream check above found the train stage current (so its stamp is there).
        if let Some(trained) = stamp::read_stamp(&layout.stage_dir(StageId::Train))? {
            check_model_is_the_trained_one(&trained, &model_hashes, &model_dir)?;
        }
    }
    let dir = stage.dir.clone();
    if !force {
        if let Freshness::UpToDate = stage.freshness()? {
            return Ok(Outcome::UpToDate(dir));
        }
    }
    let adapter_dir = match &choice.adapter {
        Some(dir) => dir.clone(),
        None => layout.stage_dir(StageId::Train).join("adapter"),
    };
    let classifier = Classifier::open(config, model_dir, adapter_dir)?;

    let threshold = config.evaluate.threshold;
    let staged = StagingDir::new(&dir)?;
    let mut test_metrics = None;
    let mut rate = 0.0;
    for &split in &splits {
        let tokens = TokenSplit::read(
            &layout
                .stage_dir(StageId::Tokenize)
                .join(Layout::tokens_file(split)),
        )?;
        if tokens.is_empty() {
            bail!("the {split} split has no reviews");
        }
        let data = pipeline::data::Reviews::read_parquet(
            &layout
                .stage_dir(StageId::DataPrep)
                .join(Layout::data_file(split)),
        )?;
        let mut progress = Progress::new(&format!("evaluate {split}"), tokens.len() as u64);
        let started = Instant::now();
        let probs = classifier.positive_probabilities(
            &tokens.input_ids,
            &tokens.attention_mask,
            tokens.max_len,
            config.evaluate.batch_size,
            Some(&mut progress),
        )?;
        progress.finish();
        let split_rate = tokens.len() as f64 / started.elapsed().as_secs_f64();
        if split == Split::Test {
            rate = split_rate;
        }
        let metrics = metrics::evaluate(&tokens.labels, &probs, threshold)
            .map_err(|e| anyhow::anyhow!("metrics of the {split} split: {e}"))?;
        let ids = tokens
            .rows
            .iter()
            .map(|&r| {
                data.ids
                    .get(r as usize)
                    .cloned()
                    .context("token rows do not match the data split: rerun `just tokenize`")
            })
            .collect::<Result<Vec<_>>>()?;
        let prefix = if split == Split::Test {
            String::new()
        } else {
            format!("{split}_")
        };
        Predictions {
            ids,
            labels: tokens.labels.clone(),
            predicted: metrics::predict(&probs, threshold),
            prob_positive: probs,
        }
        .write_parquet(
            &staged
                .path()
                .join(format!("{prefix}{}", predictions::PREDICTIONS_FILE)),
        )?;
        atomic::write_json(
            &staged
                .path()
                .join(format!("{prefix}{}", predictions::METRICS_FILE)),
            &metrics,
        )?;
        atomic::write_bytes(
            &staged
                .path()
                .join(format!("{prefix}{}", predictions::REPORT_TEXT_FILE)),
            metrics.classification_report_text.as_bytes(),
        )?;
        println!(
            "{split} split ({} reviews, {split_rate:.1} reviews/s):",
            tokens.len()
        );
        println!("{}", metrics.classification_report_text);
        if let Some(auc) = metrics.roc_auc {
            println!("ROC-AUC: {auc:.4}\n");
        }
        if split == Split::Test {
            test_metrics = Some(metrics);
        }
    }

    let encoder = encoder_for(config, choice.model.as_deref())?;
    let texts = &config.evaluate.examples;
    let examples: Vec<ExamplePrediction> = if texts.is_empty() {
        Vec::new()
    } else {
        let probs = classifier.classify_texts(&encoder, texts, config.evaluate.batch_size)?;
        texts
            .iter()
            .zip(probs)
            .map(|(t, p)| ExamplePrediction::new(t, p, threshold))
            .collect()
    };
    atomic::write_json(&staged.path().join(predictions::EXAMPLES_FILE), &examples)?;
    stage.write_stamp(staged.path())?;
    let dir = staged.commit()?;
    Ok(Outcome::Evaluated {
        dir,
        metrics: Box::new(test_metrics.expect("the test split is always evaluated")),
        reviews_per_s: rate,
    })
}
