//! Evaluation and inference: load a base model with a LoRA adapter (merged
//! for speed), classify tokenized splits or new texts, and compute the
//! metrics as scikit-learn does.

pub mod cli;
pub mod predict_cli;
mod stage;

pub use pipeline::runner::Outcome;
pub use stage::{run, Evaluate, Evaluation, CODE};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use lora_classifier::{Checkpoint, SequenceClassifier};
use pipeline::config::EvaluateDtype;
use pipeline::graph::{Source, ADAPTER_DIR};
use pipeline::sources::{self, needs, SourceFiles};
use pipeline::stamp;
use pipeline::{Config, Layout, StageId};
use text_encoder::TextEncoder;

/// Which model and adapter to use; `None` = this run's (config and artifacts).
/// Also the `--model`/`--adapter` options of `evaluate` and `predict`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelChoice {
    /// A Hugging Face checkpoint folder (config.json + safetensors) to use instead of `model.source`.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to use
    /// instead of artifacts/train/adapter; one trained in Python with PEFT works too. Without
    /// it, a --model that has a trained classification head (an export: `just export`, or
    /// any fine-tuned 2-label classifier) is used as it is.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

/// A classifier ready for inference.
pub struct Classifier {
    pub model: SequenceClassifier,
    pub model_dir: PathBuf,
    /// None: the model is a classifier as it is (an export, LoRA merged, head included).
    pub adapter_dir: Option<PathBuf>,
    device: Device,
    /// What computes the frozen layers (`cpu bf16 avx512-bf16`), as the stages print it.
    runs_on: String,
}

impl Classifier {
    /// Loads the base model and the adapter, and merges the adapter into the
    /// weights (one matmul per layer instead of three).
    pub fn load(config: &Config, choice: &ModelChoice) -> Result<Self> {
        let model_dir = resolve_model_dir(config, choice)?;
        if choice.model.is_some() && choice.adapter.is_none() {
            let checkpoint = Checkpoint::open(&model_dir)?;
            if checkpoint.has_head() {
                return Self::open_classifier(config, &checkpoint);
            }
        }
        let adapter_dir = match &choice.adapter {
            Some(dir) => dir.clone(),
            None => trained_adapter(config, &model_dir, choice.model.is_some())?,
        };
        Self::open(config, model_dir, adapter_dir)
    }

    /// Loads `adapter_dir` onto `model_dir` as they are (the caller checked that they belong
    /// together), on the device and in the dtype `training.device` and `training.dtype` say.
    fn open(config: &Config, model_dir: PathBuf, adapter_dir: PathBuf) -> Result<Self> {
        let (device, weights) = device_and_weights(config)?;
        Self::open_on(model_dir, adapter_dir, device, weights)
    }

    /// Loads `adapter_dir` onto `model_dir` on `device`, the frozen weights as `weights` says.
    pub(crate) fn open_on(
        model_dir: PathBuf,
        adapter_dir: PathBuf,
        device: Device,
        weights: Weights,
    ) -> Result<Self> {
        let dtype = weights.load_dtype();
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
        if weights == Weights::Int8 {
            model.quantize_int8()?;
        }
        Ok(Self {
            model,
            model_dir,
            adapter_dir: Some(adapter_dir),
            runs_on: weights.runs_on(&device),
            device,
        })
    }

    /// Loads a checkpoint that is a trained classifier (its head included) as it is.
    fn open_classifier(config: &Config, checkpoint: &Checkpoint) -> Result<Self> {
        let (device, weights) = device_and_weights(config)?;
        let dtype = weights.load_dtype();
        let mut model = SequenceClassifier::new(checkpoint, None, config.seed, &device, dtype)?;
        if weights == Weights::Int8 {
            model.quantize_int8()?;
        }
        Ok(Self {
            model,
            model_dir: checkpoint.dir().to_path_buf(),
            adapter_dir: None,
            runs_on: weights.runs_on(&device),
            device,
        })
    }

    /// What computes the frozen layers: device, dtype and kernel (`cpu int8 avx512-vnni`).
    pub fn runs_on(&self) -> &str {
        &self.runs_on
    }

    /// P(positive) for each row of `input_ids`/`attention_mask` ([n, max_len]), reporting each
    /// batch, once classified, to `on_batch` (a caller's progress bar: this library shows none).
    pub fn positive_probabilities(
        &self,
        input_ids: &[u32],
        attention_mask: &[u32],
        max_len: usize,
        batch_size: usize,
        mut on_batch: Option<&mut dyn FnMut(&BatchDone)>,
    ) -> Result<Vec<f64>> {
        let examples = inference::Examples {
            input_ids,
            attention_mask,
            labels: &[],
            max_len,
        };
        let total = examples.len();
        let mut probs = vec![f64::NAN; total];
        let (started, mut done) = (Instant::now(), 0usize);
        inference::infer(
            &self.model,
            &examples,
            batch_size,
            &self.device,
            |rows, logits| {
                let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
                // The loaders refuse non-finite weights, but finite ones can still overflow (f16,
                // absurd magnitudes): a NaN probability must not pass for an answer.
                if let Some(row) = logits.iter().position(|l| !l.iter().all(|x| x.is_finite())) {
                    bail!(
                        "the model gave non-finite logits {:?} for review {}: its weights or \
                     activations overflow (with training.dtype f16, try f32 or bf16)",
                        logits[row],
                        rows[row]
                    );
                }
                for (&i, l) in rows.iter().zip(&logits) {
                    probs[i] = positive_probability(l);
                }
                done += rows.len();
                if let Some(report) = on_batch.as_deref_mut() {
                    report(&BatchDone {
                        rows: rows.len(),
                        done,
                        total,
                        elapsed: started.elapsed(),
                    });
                }
                Ok(())
            },
        )?;
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

/// One batch of [`Classifier::positive_probabilities`] classified, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchDone {
    /// Rows in this batch.
    pub rows: usize,
    /// Rows classified so far in this call, this batch's included.
    pub done: usize,
    /// Rows this call classifies in all.
    pub total: usize,
    /// Time since this call began.
    pub elapsed: Duration,
}

impl BatchDone {
    /// Rows classified per second so far in this call.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The frozen weights' format in evaluate and predict: `training.dtype`'s, or the merged f32
/// weights quantized to int8 (`evaluate.dtype: int8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weights {
    Dtype(DType),
    Int8,
}

impl Weights {
    /// The dtype the weights are loaded in: int8 quantizes the merged f32 weights.
    fn load_dtype(self) -> DType {
        match self {
            Weights::Dtype(dtype) => dtype,
            Weights::Int8 => DType::F32,
        }
    }

    /// What computes them on `device`, as the stages print it (`cpu int8 avx512-vnni`).
    pub(crate) fn runs_on(self, device: &Device) -> String {
        let weights = match self {
            Weights::Dtype(dtype) => lora_classifier::FrozenWeights::Float(dtype),
            Weights::Int8 => lora_classifier::FrozenWeights::Int8,
        };
        lora_classifier::runs_on(device, weights, lora_classifier::Kernels::from_env())
    }

    /// As the evaluate stamp records it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Weights::Dtype(dtype) => inference::device::dtype_name(dtype),
            Weights::Int8 => "int8",
        }
    }
}

/// `training.device` with `training.dtype` or `evaluate.dtype`, resolved.
fn device_and_weights(config: &Config) -> Result<(Device, Weights)> {
    let (device, _) =
        inference::device::select_device(config.training.device).context("training.device")?;
    let weights = match config.evaluate.dtype {
        EvaluateDtype::Auto => Weights::Dtype(inference::device::select_dtype(
            config.training.dtype,
            &device,
        )),
        EvaluateDtype::Int8 if device.is_cpu() => Weights::Int8,
        EvaluateDtype::Int8 => bail!(
            "evaluate.dtype is int8, which runs on the CPU only, but training.device selects \
             {device:?}: set training.device to cpu or evaluate.dtype to auto"
        ),
    };
    Ok((device, weights))
}

/// The checkpoint folder: `--model DIR`, else `model.source` (through the HF cache), with
/// its tokenizer.
fn resolve_model_dir(config: &Config, choice: &ModelChoice) -> Result<PathBuf> {
    match &choice.model {
        Some(dir) => Ok(dir.clone()),
        None => sources::model_dir(StageId::Evaluate, config),
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
    let adapter = train_dir.join(ADAPTER_DIR);
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
        &["model.max_len", "model.truncation"]
    } else {
        &[
            "model.source",
            "model.revision",
            "model.max_len",
            "model.truncation",
        ]
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
    let hashes = SourceFiles::model(model_dir)?.hashes()?;
    for (name, hash) in stamp.inputs_under(Source::Model.prefix()) {
        if hashes.get(name).map(String::as_str) != Some(hash) {
            bail!(
                "the model's {} changed since `train` ran (model {}): the adapter was trained \
                 on other weights; run `just train` first",
                name.trim_start_matches(Source::Model.prefix()),
                model_dir.display()
            );
        }
    }
    Ok(adapter)
}

/// softmax(logits)[1] for two logits, computed stably in f64.
fn positive_probability(logits: &[f32]) -> f64 {
    let d = logits[0] as f64 - logits[1] as f64;
    1.0 / (1.0 + d.exp())
}

/// The tokenizer of the configured model (or of `model_dir`), set up as the tokenize stage
/// did.
pub fn encoder_for(config: &Config, model_dir: Option<&Path>) -> Result<TextEncoder> {
    let dir = match model_dir {
        Some(dir) => dir.to_path_buf(),
        None => {
            let sources = [Source::Tokenizer];
            hub::model_dir(
                &config.model.source,
                &config.model.revision,
                needs(&sources),
            )?
        }
    };
    Ok(
        TextEncoder::for_model(&dir, config.model.max_len)?
            .with_truncation(config.model.truncation),
    )
}
