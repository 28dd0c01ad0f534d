//! The export stage: the trained adapter merged into the base model → artifacts/export, a
//! Hugging Face checkpoint that plain transformers (no PEFT) and `predict --model` load.
//! The merging and writing are lora-classifier's (`SequenceClassifier::write_export`).

pub mod cli;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use candle_core::{DType, Device};
use lora_classifier::{Checkpoint, ExportOptions, SequenceClassifier};
use pipeline::graph::{ADAPTER_DIR, EXPORT_FILES};
pub use pipeline::runner::Outcome;
use pipeline::runner::{self, Context, Inputs, Recorded, Stage, StageInputs};
use pipeline::sources::{self, SourceFiles};
use pipeline::{Config, StageId};

/// The source identity of this stage's code (its build script computes it).
pub const CODE: &str = env!("STAGE_IDENTITY");

/// What a run wrote.
#[derive(Debug)]
pub struct Exported {
    /// "BertForSequenceClassification" or "GPT2ForSequenceClassification".
    pub architecture: String,
    pub dtype: String,
    /// model.safetensors, bytes.
    pub weights_bytes: u64,
}

/// The stage; the model folder is resolved when it says where its inputs are.
#[derive(Default)]
pub struct Export {
    model_dir: PathBuf,
}

impl StageInputs for Export {
    fn id(&self) -> StageId {
        StageId::Export
    }

    fn code(&self) -> &'static str {
        CODE
    }

    fn inputs(&mut self, ctx: &Context) -> Result<Inputs> {
        self.model_dir = sources::model_dir(self.id(), ctx.config)?;
        Ok(Inputs {
            sources: vec![
                SourceFiles::model(&self.model_dir)?,
                SourceFiles::tokenizer(&self.model_dir)?,
            ],
            ..Inputs::default()
        })
    }
}

impl Stage for Export {
    type Summary = Exported;

    fn run(&mut self, ctx: &Context, _: &Recorded, out: &Path) -> Result<Exported> {
        let config = ctx.config;
        let adapter = ctx.layout.stage_dir(StageId::Train).join(ADAPTER_DIR);
        let ckpt = Checkpoint::open(&self.model_dir)?;
        // Merged in f32 on the CPU whatever the training device: the export is exact, and
        // `export.dtype` rounds it once, at the end.
        let model = SequenceClassifier::load_adapter(&ckpt, &adapter, &Device::Cpu, DType::F32)
            .with_context(|| {
                format!(
                    "loading adapter {} onto model {}",
                    adapter.display(),
                    self.model_dir.display()
                )
            })?;
        let options = ExportOptions {
            dtype: config.export.dtype,
            max_len: config.model.max_len,
            truncation: config.model.truncation,
        };
        model.write_export(&ckpt, out, options)?;
        let weights = out.join(EXPORT_FILES[1]);
        Ok(Exported {
            architecture: model.architecture().hf_classifier().into(),
            dtype: config.export.dtype.to_string(),
            weights_bytes: std::fs::metadata(&weights)?.len(),
        })
    }

    fn describe(&self, e: &Exported) -> Vec<String> {
        vec![format!(
            "{} in {}, model.safetensors {:.1} MB",
            e.architecture,
            e.dtype,
            e.weights_bytes as f64 / 1e6
        )]
    }
}

/// Runs the stage.
pub fn run(config: &Config, force: bool) -> Result<Outcome<Exported>> {
    runner::execute(&mut Export::default(), config, force)
}
