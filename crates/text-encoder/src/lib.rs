//! Text → padded token tensors, exactly as Python's
//! `tokenizer(text, padding="max_length", truncation=True, max_length=n)`.
//!
//! One definition for the tokenize stage and for inference on new texts, so a
//! review is encoded the same way in training and in `predict`.

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
pub use choices::Truncation;
use rayon::prelude::*;
use tokenizers::{
    Encoding, NormalizerWrapper, PaddingDirection, PaddingParams, PaddingStrategy,
    PreTokenizerWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// GPT-2 has no pad token; like the notebook we pad with its eos.
const GPT2_EOS: &str = "<|endoftext|>";

/// Bytes of text tried per kept token before tokenizing more of it. IMDb
/// reviews average 4.3 per MiniLM or GPT-2 token (at most 5.8 in the test split).
const PREFIX_BYTES_PER_TOKEN: usize = 6;

pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation or padding: every token of a text (tail and
    /// head_tail truncation choose from them).
    whole: Tokenizer,
    truncation: Truncation,
    /// The same tokenizer truncating one token later, without padding (see `is_cut`).
    probe: Tokenizer,
    max_len: usize,
    pad_id: u32,
    /// Whether long texts may be tokenized from a prefix (see `encode_one`).
    prefix_cut: bool,
}

/// Refuses a `model.max_len` beyond the `positions` of the model (`model` names it). The one
/// check of the key against a model, where the two meet: [`TextEncoder::for_model`] (tokenize,
/// evaluate and predict encode with it) and the train stage, which reads the tokens made with
/// it.
pub fn check_max_len(max_len: usize, positions: usize, model: &dyn fmt::Display) -> Result<()> {
    if max_len > positions {
        bail!(
            "model.max_len {max_len} is beyond the {positions} positions of the model {model}: \
             lower model.max_len to at most {positions}"
        );
    }
    Ok(())
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
    /// The tokenizer of the model folder `model_dir`, set up for `max_len` after checking
    /// that the model has that many positions (else training or inference would fail only
    /// later): what tokenize encodes the splits with, and evaluate and predict new texts.
    pub fn for_model(model_dir: &Path, max_len: usize) -> Result<Self> {
        let config_path = model_dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
        let positions = ["max_position_embeddings", "n_positions"]
            .iter()
            .find_map(|key| config.get(*key)?.as_u64());
        if let Some(positions) = positions {
            let positions = usize::try_from(positions).unwrap_or(usize::MAX);
            check_max_len(max_len, positions, &model_dir.display())?;
        }
        let path = model_dir.join("tokenizer.json");
        if !path.exists() {
            bail!(
                "{} is missing: the model folder needs its tokenizer",
                path.display()
            );
        }
        Self::from_file(&path, max_len)
    }

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
        let mut probe = tokenizer.clone();
        probe
            .with_truncation(Some(TruncationParams {
                max_length: max_len + 1,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?
            .with_padding(None);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        let prefix_cut = splits_at_spaces(&tokenizer);
        let mut whole = tokenizer.clone();
        whole
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?
            .with_padding(None);
        Ok(Self {
            tokenizer,
            whole,
            truncation: Truncation::Head,
            probe,
            max_len,
            pad_id,
            prefix_cut,
        })
    }

    /// Keeps the tokens `truncation` says of a text longer than a row (head by default).
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
    }

    /// Whether long texts are tokenized from a prefix only (same ids, less work).
    pub fn cuts_prefixes(&self) -> bool {
        self.prefix_cut
    }

    /// Turns the prefix shortcut off (to check that it changes nothing).
    pub fn with_prefix_cut(mut self, on: bool) -> Self {
        self.prefix_cut &= on;
        self
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Encodes `texts` in parallel, each straight into its row of the output
    /// (no batch of `Encoding`s held: they are large with the overflow).
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Encoded> {
        let len = self.max_len;
        let mut input_ids = vec![0; texts.len() * len];
        let mut attention_mask = vec![0; texts.len() * len];
        let truncated = input_ids
            .par_chunks_mut(len)
            .zip(attention_mask.par_chunks_mut(len))
            .zip(texts.par_iter())
            .with_min_len(32)
            .map(|((ids, mask), text)| {
                if self.truncation != Truncation::Head {
                    return Ok(usize::from(self.encode_cut(text.as_ref(), ids, mask)?));
                }
                let (encoding, cut) = self.encode_one(text.as_ref())?;
                ensure!(
                    encoding.len() == len,
                    "the tokenizer returned {} tokens, not {len}",
                    encoding.len()
                );
                ids.copy_from_slice(encoding.get_ids());
                mask.copy_from_slice(encoding.get_attention_mask());
                Ok(usize::from(cut))
            })
            .sum::<Result<usize>>()?;
        Ok(Encoded {
            input_ids,
            attention_mask,
            truncated,
        })
    }

    /// Tail and head_tail truncation: every token of `text`, then the special tokens around
    /// the kept ones (as HF truncates the text before adding them), padded on the right.
    /// Returns whether the text was cut.
    fn encode_cut(&self, text: &str, ids: &mut [u32], mask: &mut [u32]) -> Result<bool> {
        let encoding = self
            .whole
            .encode_fast(text, true)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let (all, special) = (encoding.get_ids(), encoding.get_special_tokens_mask());
        let lead = special.iter().take_while(|&&s| s == 1).count();
        let trail = (special.iter().rev().take_while(|&&s| s == 1).count()).min(all.len() - lead);
        let content = &all[lead..all.len() - trail];
        let budget = self.max_len.saturating_sub(lead + trail);
        let cut = content.len() > budget;
        let (head, tail) = match (cut, self.truncation) {
            (false, _) => (content.len(), 0),
            (true, Truncation::Tail) => (0, budget),
            (true, Truncation::HeadTail) => (budget / 4, budget - budget / 4),
            (true, Truncation::Head) => (budget, 0),
        };
        let row: Vec<u32> = (all[..lead].iter())
            .chain(&content[..head])
            .chain(&content[content.len() - tail..])
            .chain(&all[all.len() - trail..])
            .copied()
            .collect();
        ensure!(
            row.len() <= self.max_len,
            "a row of {} tokens, not at most {}",
            row.len(),
            self.max_len
        );
        ids[..row.len()].copy_from_slice(&row);
        ids[row.len()..].fill(self.pad_id);
        mask[..row.len()].fill(1);
        mask[row.len()..].fill(0);
        Ok(cut)
    }

    /// Most reviews are cut at `max_len` tokens, so tokenizing all of a long
    /// one is mostly wasted. When the tokenizer treats text on either side of
    /// whitespace independently, a prefix that ends in a non-space before a
    /// space gives the same first tokens, and if it overflows `max_len` so
    /// does the whole text. A prefix that does not overflow grows until it is
    /// the whole text.
    fn encode_one(&self, text: &str) -> Result<(Encoding, bool)> {
        let mut budget = self.max_len * PREFIX_BYTES_PER_TOKEN;
        loop {
            let prefix = match text.as_bytes().get(budget..) {
                // A space is ASCII, so `budget + i` is a char boundary. Trailing
                // whitespace goes too: GPT-2 joins a run of it to what follows.
                Some(rest) if self.prefix_cut => match rest.iter().position(|&b| b == b' ') {
                    Some(i) => text[..budget + i].trim_end(),
                    None => text,
                },
                _ => text,
            };
            // `encode_fast` skips the character offsets, which we do not use.
            let encoding = self
                .tokenizer
                .encode_fast(prefix, true)
                .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
            let cut = self.is_cut(prefix, &encoding)?;
            if prefix.len() == text.len() || cut {
                return Ok((encoding, cut));
            }
            budget *= 2;
        }
    }

    /// Whether `text` has more tokens than its row holds. tokenizers 0.23 stops tokenizing
    /// once it has `max_len` tokens, so a text cut exactly at a word boundary reports no
    /// overflow (GPT-2, which adds no special tokens); for a full row without one, the probe,
    /// which keeps one token more, tells.
    fn is_cut(&self, text: &str, encoding: &Encoding) -> Result<bool> {
        if !encoding.get_overflowing().is_empty() {
            return Ok(true);
        }
        if encoding.get_attention_mask().contains(&0) {
            return Ok(false);
        }
        let probe = self
            .probe
            .encode_fast(text, true)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        Ok(probe.len() > self.max_len)
    }
}

/// Whether every step before the model treats text on either side of a space
/// independently: BERT's normalizer and pre-tokenizer, GPT-2's byte-level
/// regex split, and no added token containing a space.
fn splits_at_spaces(tokenizer: &Tokenizer) -> bool {
    let normalizer = matches!(
        tokenizer.get_normalizer(),
        None | Some(NormalizerWrapper::BertNormalizer(_))
    );
    let pre_tokenizer = match tokenizer.get_pre_tokenizer() {
        Some(PreTokenizerWrapper::BertPreTokenizer(_)) => true,
        Some(PreTokenizerWrapper::ByteLevel(byte_level)) => byte_level.use_regex,
        _ => false,
    };
    let added = tokenizer
        .get_added_tokens_decoder()
        .values()
        .all(|token| !token.content.contains(' '));
    normalizer && pre_tokenizer && added
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_len_beyond_the_positions_names_the_key() {
        check_max_len(64, 64, &"m").unwrap();
        assert_eq!(
            check_max_len(65, 64, &"\"m\"").unwrap_err().to_string(),
            "model.max_len 65 is beyond the 64 positions of the model \"m\": lower model.max_len \
             to at most 64"
        );
    }
}
