//! Text → padded token tensors, exactly as Python's
//! `tokenizer(text, padding="max_length", truncation=True, max_length=n)`.
//!
//! One definition for the tokenize stage and for inference on new texts, so a
//! review is encoded the same way in training and in `predict`.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// GPT-2 has no pad token; like the notebook we pad with its eos.
const GPT2_EOS: &str = "<|endoftext|>";

pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_len: usize,
    pad_id: u32,
}

/// Encoded texts, row-major [n, max_len].
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// Texts longer than max_len tokens (cut).
    pub truncated: usize,
}

impl TextEncoder {
    /// Loads `tokenizer.json` and sets padding and truncation to `max_len`
    /// (the file's own settings, e.g. MiniLM's 128, are replaced).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        let (pad_id, pad_token) = pad_token(&tokenizer)
            .with_context(|| format!("{}: no padding token", path.display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self {
            tokenizer,
            max_len,
            pad_id,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Encodes `texts` in parallel (tokenizers uses rayon) with special tokens
    /// as the tokenizer's post-processor defines them.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Encoded> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let n = encodings.len();
        let mut out = Encoded {
            input_ids: Vec::with_capacity(n * self.max_len),
            attention_mask: Vec::with_capacity(n * self.max_len),
            truncated: 0,
        };
        for enc in &encodings {
            out.input_ids.extend_from_slice(enc.get_ids());
            out.attention_mask
                .extend_from_slice(enc.get_attention_mask());
            out.truncated += usize::from(!enc.get_overflowing().is_empty());
        }
        Ok(out)
    }
}

/// The tokenizer's padding token: its configured one, `[PAD]`, or GPT-2's eos.
fn pad_token(tokenizer: &Tokenizer) -> Option<(u32, String)> {
    if let Some(p) = tokenizer.get_padding() {
        return Some((p.pad_id, p.pad_token.clone()));
    }
    ["[PAD]", "<pad>", GPT2_EOS]
        .into_iter()
        .find_map(|t| tokenizer.token_to_id(t).map(|id| (id, t.to_string())))
}
