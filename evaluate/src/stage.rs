//! The evaluate stage: predictions and metrics for the test split (and the validation split
//! with `evaluate.validation`), and the config's example texts classified → artifacts/evaluate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device};
use pipeline::atomic;
use pipeline::cli::Progress;
use pipeline::graph::{Read, ADAPTER_DIR};
use pipeline::predictions::{self, ExamplePrediction, Predictions};
use pipeline::runner::{self, Context, Inputs, Outcome, Recorded, Stage, StageInputs};
use pipeline::sources::SourceFiles;
use pipeline::tokens::TokenSplit;
use pipeline::{Config, Layout, Split, StageId};

use crate::{device_and_weights, encoder_for, resolve_model_dir, Classifier, ModelChoice, Weights};

/// The source identity of this stage's code (its build script computes it).
pub const CODE: &str = env!("STAGE_IDENTITY");

/// What a run of the stage gives: the test split's metrics and throughput.
#[derive(Debug)]
pub struct Evaluation {
    pub metrics: Box<metrics::Metrics>,
    pub reviews_per_s: f64,
    /// What computed the frozen layers (`cpu int8 avx512-vnni`, …).
    pub runs_on: String,
}

/// The stage, with the model and adapter chosen on the command line (or this run's).
pub struct Evaluate {
    choice: ModelChoice,
    model_dir: PathBuf,
    device: Device,
    weights: Weights,
}

impl Evaluate {
    pub fn new(choice: ModelChoice) -> Self {
        Self {
            choice,
            model_dir: PathBuf::new(),
            device: Device::Cpu,
            weights: Weights::Dtype(DType::F32),
        }
    }
}

impl StageInputs for Evaluate {
    fn id(&self) -> StageId {
        StageId::Evaluate
    }

    fn code(&self) -> &'static str {
        CODE
    }

    fn inputs(&mut self, ctx: &Context) -> Result<Inputs> {
        self.model_dir = resolve_model_dir(ctx.config, &self.choice)?;
        let mut inputs = Inputs {
            sources: vec![
                SourceFiles::model(&self.model_dir)?,
                SourceFiles::tokenizer(&self.model_dir)?,
            ],
            ..Inputs::default()
        };
        (self.device, self.weights) = device_and_weights(ctx.config)?;
        // The device does not decide the probabilities; the weights' format does.
        inputs
            .runtime
            .insert("dtype".into(), self.weights.name().into());
        Ok(inputs)
    }

    /// `--adapter DIR` stands in for the train stage's adapter.
    fn replacement(&self, read: &Read) -> Option<PathBuf> {
        let dir = self.choice.adapter.as_ref()?;
        let file = read.file.strip_prefix(ADAPTER_DIR)?.strip_prefix('/')?;
        (read.stage == StageId::Train).then(|| dir.join(file))
    }
}

impl Stage for Evaluate {
    type Summary = Evaluation;

    fn run(&mut self, ctx: &Context, _: &Recorded, out: &Path) -> Result<Evaluation> {
        let config = ctx.config;
        let adapter_dir = match &self.choice.adapter {
            Some(dir) => dir.clone(),
            None => ctx.layout.stage_dir(StageId::Train).join(ADAPTER_DIR),
        };
        let classifier = Classifier::open_on(
            self.model_dir.clone(),
            adapter_dir,
            self.device.clone(),
            self.weights,
        )?;
        let runs_on = classifier.runs_on().to_string();
        println!("evaluate: runs on {runs_on}");
        let mut splits = vec![Split::Test];
        if config.evaluate.validation {
            splits.push(Split::Validation);
        }
        let threshold = config.evaluate.threshold;
        let mut test = None;
        for split in splits {
            let tokens =
                TokenSplit::read(&ctx.artifact(StageId::Tokenize, Layout::tokens_file(split)))?;
            if tokens.is_empty() {
                bail!("the {split} split has no reviews");
            }
            let data = pipeline::data::Reviews::read_parquet(
                &ctx.artifact(StageId::DataPrep, Layout::data_file(split)),
            )?;
            let mut progress = Progress::new(&format!("evaluate {split}"), tokens.len() as u64);
            let started = Instant::now();
            let probs = classifier.positive_probabilities(
                &tokens.input_ids,
                &tokens.attention_mask,
                tokens.max_len,
                config.evaluate.batch_size,
                Some(&mut crate::cli::show_batches(&mut progress)),
            )?;
            progress.finish();
            let rate = tokens.len() as f64 / started.elapsed().as_secs_f64();
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
            let [predictions_file, metrics_file, report_file] = predictions::split_files(split);
            Predictions {
                ids,
                labels: tokens.labels.clone(),
                predicted: metrics::predict(&probs, threshold),
                prob_positive: probs,
            }
            .write_parquet(&out.join(predictions_file))?;
            atomic::write_json(&out.join(metrics_file), &metrics)?;
            atomic::write_bytes(
                &out.join(report_file),
                metrics.classification_report_text.as_bytes(),
            )?;
            println!(
                "{split} split ({} reviews, {rate:.1} reviews/s):",
                tokens.len()
            );
            println!("{}", metrics.classification_report_text);
            if let Some(auc) = metrics.roc_auc {
                println!("ROC-AUC: {auc:.4}\n");
            }
            if split == Split::Test {
                test = Some((metrics, rate));
            }
        }

        let encoder = encoder_for(config, Some(&self.model_dir))?;
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
        atomic::write_json(&out.join(predictions::EXAMPLES_FILE), &examples)?;
        let (metrics, reviews_per_s) = test.expect("the test split is always evaluated");
        Ok(Evaluation {
            metrics: Box::new(metrics),
            reviews_per_s,
            runs_on,
        })
    }

    fn describe(&self, e: &Evaluation) -> Vec<String> {
        vec![format!(
            "accuracy {:.4}, ROC-AUC {}, {:.1} reviews/s on {}",
            e.metrics.accuracy,
            e.metrics
                .roc_auc
                .map_or("n/a".into(), |a| format!("{a:.4}")),
            e.reviews_per_s,
            e.runs_on
        )]
    }
}

/// Runs the stage with the model and adapter `choice` names (this run's by default).
pub fn run(config: &Config, choice: &ModelChoice, force: bool) -> Result<Outcome<Evaluation>> {
    runner::execute(&mut Evaluate::new(choice.clone()), config, force)
}
