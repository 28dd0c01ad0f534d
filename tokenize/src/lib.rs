//! The tokenize stage: every data split to fixed-length token ids.
//!
//! Reviews are padded and truncated exactly as Python's
//! `tokenizer(text, padding="max_length", truncation=True, max_length=max_len)`
//! does with the model's `tokenizer.json`: `[CLS] … [SEP] [PAD]…` for BERT,
//! no special tokens and eos padding for GPT-2 (which has no pad token).
//! The encoding itself is `text_encoder::TextEncoder`, which `predict`
//! uses too, so new texts are encoded as the training data was.

pub mod cli;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _, Result};
use pipeline::atomic;
use pipeline::data::Reviews;
pub use pipeline::runner::Outcome;
use pipeline::runner::{self, Context, Inputs, Recorded, Stage, StageInputs};
use pipeline::sources::{self, SourceFiles};
pub use pipeline::tokens::SUMMARY_FILE;
use pipeline::tokens::{TokenSplit, TokenSplitSummary};
use pipeline::{Config, Layout, Split, StageId};
use serde::{Deserialize, Serialize};
use text_encoder::TextEncoder;

/// `tokens/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokensSummary {
    /// The model source whose tokenizer was used.
    pub tokenizer: String,
    pub max_len: usize,
    pub pad_token_id: u32,
    pub train: TokenSplitSummary,
    pub validation: TokenSplitSummary,
    pub test: TokenSplitSummary,
}

impl TokensSummary {
    pub fn split(&self, split: Split) -> &TokenSplitSummary {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

/// The source identity of this stage's code (its build script computes it).
pub const CODE: &str = env!("STAGE_IDENTITY");

/// The stage; the model folder is resolved when it says where its inputs are.
#[derive(Default)]
pub struct Tokenize {
    model_dir: PathBuf,
}

impl StageInputs for Tokenize {
    fn id(&self) -> StageId {
        StageId::Tokenize
    }

    fn code(&self) -> &'static str {
        CODE
    }

    fn inputs(&mut self, ctx: &Context) -> Result<Inputs> {
        self.model_dir = sources::model_dir(self.id(), ctx.config)?;
        Ok(Inputs {
            sources: vec![SourceFiles::tokenizer(&self.model_dir)?],
            ..Inputs::default()
        })
    }
}

impl Stage for Tokenize {
    type Summary = TokensSummary;

    /// `data/{split}.parquet` → `tokens/{split}.safetensors` and the summary.
    fn run(&mut self, ctx: &Context, _: &Recorded, out: &Path) -> Result<TokensSummary> {
        let model = &ctx.config.model;
        let encoder = TextEncoder::for_model(&self.model_dir, model.max_len)?
            .with_truncation(model.truncation);
        // Read and check every split before any work, so a bad one fails fast.
        let splits = Split::ALL
            .into_iter()
            .map(|split| {
                let path = ctx.artifact(StageId::DataPrep, Layout::data_file(split));
                let reviews = Reviews::read_parquet(&path)?;
                ensure!(
                    !reviews.is_empty(),
                    "{} holds no reviews: check the data settings and rerun `just data-prep`",
                    path.display()
                );
                Ok((split, reviews))
            })
            .collect::<Result<Vec<_>>>()?;

        let mut summaries = Vec::new();
        for (split, reviews) in splits {
            let encoded = encoder
                .encode(&reviews.texts)
                .with_context(|| format!("tokenizing the {split} split"))?;
            let count = reviews.len();
            let tokens = TokenSplit {
                max_len: encoder.max_len(),
                pad_token_id: encoder.pad_id(),
                tokenizer: model.source.clone(),
                input_ids: encoded.input_ids,
                attention_mask: encoded.attention_mask,
                labels: reviews.labels.iter().map(|&l| u32::from(l)).collect(),
                rows: (0..count as u32).collect(),
            };
            tokens.write(&out.join(Layout::tokens_file(split)))?;
            summaries.push(TokenSplitSummary {
                count,
                truncated: encoded.truncated,
                truncated_share: encoded.truncated as f64 / count as f64,
            });
        }
        let [train, validation, test] = <[_; 3]>::try_from(summaries).expect("three splits");
        let summary = TokensSummary {
            tokenizer: model.source.clone(),
            max_len: encoder.max_len(),
            pad_token_id: encoder.pad_id(),
            train,
            validation,
            test,
        };
        atomic::write_json(&out.join(SUMMARY_FILE), &summary)?;
        Ok(summary)
    }

    fn describe(&self, summary: &TokensSummary) -> Vec<String> {
        Split::ALL
            .iter()
            .map(|&split| {
                let s = summary.split(split);
                format!(
                    "{split}: {} reviews, {} ({:.1}%) truncated to {} tokens",
                    s.count,
                    s.truncated,
                    100.0 * s.truncated_share,
                    summary.max_len
                )
            })
            .collect()
    }
}

/// Runs the stage: `data/{split}.parquet` → `tokens/{split}.safetensors`.
pub fn run(config: &Config, force: bool) -> Result<Outcome<TokensSummary>> {
    runner::execute(&mut Tokenize::default(), config, force)
}
