//! The tokenize stage: every data split to fixed-length token ids.
//!
//! Reviews are padded and truncated exactly as Python's
//! `tokenizer(text, padding="max_length", truncation=True, max_length=max_len)`
//! does with the model's `tokenizer.json`: `[CLS] … [SEP] [PAD]…` for BERT,
//! no special tokens and eos padding for GPT-2 (which has no pad token).
//! The encoding itself is `pipeline::encode::TextEncoder`, which `predict`
//! uses too, so new texts are encoded as the training data was.

pub mod cli;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use pipeline::atomic::{self, StagingDir};
use pipeline::data::Reviews;
use pipeline::encode::TextEncoder;
use pipeline::stamp::{Freshness, StageRun};
use pipeline::tokens::{TokenSplit, TokenSplitSummary};
use pipeline::{hub, Config, Layout, Split, StageId};
use serde::{Deserialize, Serialize};

/// The model's tokenizer set up for `max_len`, after checking that the model
/// has that many positions (else training would fail only later).
pub fn encoder(model_dir: &Path, max_len: usize) -> Result<TextEncoder> {
    let config_path = model_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let positions = ["max_position_embeddings", "n_positions"]
        .iter()
        .find_map(|key| config.get(*key)?.as_u64());
    if let Some(positions) = positions.filter(|&p| max_len as u64 > p) {
        bail!(
            "model.max_len {max_len} exceeds the {positions} positions of the model ({})",
            config_path.display()
        );
    }
    TextEncoder::from_file(&model_dir.join("tokenizer.json"), max_len)
}

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

pub const SUMMARY_FILE: &str = "summary.json";

/// What a run of the stage did.
#[derive(Debug)]
pub enum Outcome {
    UpToDate {
        dir: PathBuf,
    },
    Ran {
        dir: PathBuf,
        /// Why the stage ran.
        reason: String,
        summary: TokensSummary,
    },
}

/// Runs the stage: `data/{split}.parquet` → `tokens/{split}.safetensors`.
pub fn run(config: &Config, force: bool) -> Result<Outcome> {
    let layout = Layout::new(&config.artifacts);
    let mut stage = StageRun::new(&layout, StageId::Tokenize, config);
    let data_files = Split::ALL.map(Layout::data_file);
    let data_files: Vec<&str> = data_files.iter().map(String::as_str).collect();
    stage.upstream(&layout, config, StageId::DataPrep, &data_files)?;
    let model = &config.model;
    let model_dir = hub::model_dir(&model.source, &model.revision, false, true)?;
    stage.input_file("tokenizer.json", &model_dir.join("tokenizer.json"))?;
    let reason = match stage.freshness()? {
        Freshness::UpToDate if !force => return Ok(Outcome::UpToDate { dir: stage.dir }),
        Freshness::UpToDate => "--force".to_string(),
        Freshness::Stale(reason) => reason,
    };

    let encoder = encoder(&model_dir, model.max_len)?;
    let data_dir = layout.stage_dir(StageId::DataPrep);
    // Read and check every split before any work, so a bad one fails fast.
    let splits = Split::ALL
        .into_iter()
        .map(|split| {
            let path = data_dir.join(Layout::data_file(split));
            let reviews = Reviews::read_parquet(&path)?;
            ensure!(
                !reviews.is_empty(),
                "{} holds no reviews: check the data settings and rerun `just data-prep`",
                path.display()
            );
            Ok((split, reviews))
        })
        .collect::<Result<Vec<_>>>()?;

    let staged = StagingDir::new(&stage.dir)?;
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
        tokens.write(&staged.path().join(Layout::tokens_file(split)))?;
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
    atomic::write_json(&staged.path().join(SUMMARY_FILE), &summary)?;
    stage.write_stamp(staged.path())?;
    let dir = staged.commit()?;
    Ok(Outcome::Ran {
        dir,
        reason,
        summary,
    })
}
