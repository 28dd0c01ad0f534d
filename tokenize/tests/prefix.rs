//! Tokenizing long texts from a prefix gives exactly the ids of tokenizing
//! them whole: on real reviews and on texts built to break it at the cut. The tokenizers are
//! the fixture models' tokenizer.json files, which are the real MiniLM and GPT-2 ones.

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use polars::prelude::*;
use text_encoder::TextEncoder;

/// The MiniLM and GPT-2 tokenizer files.
fn tokenizers() -> [PathBuf; 2] {
    ["bert", "gpt2"].map(|m| fixture(&format!("{m}-tiny-lora/base/tokenizer.json")))
}

fn assert_same_as_whole(file: &Path, max_len: usize, texts: &[String]) {
    let fast = TextEncoder::from_file(file, max_len).unwrap();
    assert!(fast.cuts_prefixes(), "{}", file.display());
    let whole = TextEncoder::from_file(file, max_len)
        .unwrap()
        .with_prefix_cut(false);
    let (a, b) = (fast.encode(texts).unwrap(), whole.encode(texts).unwrap());
    assert_eq!(
        a.truncated,
        b.truncated,
        "{} max_len {max_len}",
        file.display()
    );
    for (row, text) in texts.iter().enumerate() {
        let span = row * max_len..(row + 1) * max_len;
        assert_eq!(a.input_ids[span.clone()], b.input_ids[span], "{text:?}");
    }
    assert_eq!(a, b);
}

#[test]
fn real_reviews_give_the_same_ids() {
    let file = test_support::require!(test_support::real_dataset_file(
        test_support::IMDB,
        test_support::IMDB_TRAIN
    ));
    let df = ParquetReader::new(std::fs::File::open(file).unwrap())
        .finish()
        .unwrap();
    let texts: Vec<String> = df
        .column("text")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .take(1000)
        .map(|t| t.unwrap().to_string())
        .collect();
    for file in tokenizers() {
        for max_len in [32, 128] {
            assert_same_as_whole(&file, max_len, &texts);
        }
    }
}

#[test]
fn texts_made_to_break_at_the_cut_give_the_same_ids() {
    // Whitespace runs and kinds, controls BERT drops, accents and combining
    // marks, CJK, long words, contractions, digits, added tokens.
    const PIECES: &[&str] = &[
        "film",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        " \n ",
        "\u{a0}",
        "\u{3000}",
        "\u{c}",
        "\u{0}",
        "e\u{301}",
        "\u{301}",
        "Café",
        "naïve",
        "映画",
        "好",
        "'s",
        "'ll",
        "n't",
        "!!!",
        "?!",
        "...",
        "—",
        "1984",
        "3.5",
        "<|endoftext|>",
        "[SEP]",
        "[MASK]",
        "<br /><br />",
        "antidisestablishmentarianism",
        "x",
        "😀",
        "\u{200b}",
        "\r\n",
        "\n\n\n\n\n\n\n",
        "        ",
        "\t\t\t\t",
        " \t \n  ",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let texts: Vec<String> = (0..2000)
        .map(|_| {
            (0..10 + next(120))
                .map(|_| PIECES[next(PIECES.len())])
                .collect()
        })
        .collect();
    for file in tokenizers() {
        for max_len in [4, 5, 8, 13, 24] {
            assert_same_as_whole(&file, max_len, &texts);
        }
    }
}

#[test]
fn other_pre_tokenizers_are_tokenized_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("bert-tiny-lora/base");
    std::fs::copy(base.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("tokenizer.json")).unwrap())
            .unwrap();
    json["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    std::fs::write(tmp.path().join("tokenizer.json"), json.to_string()).unwrap();
    assert!(!TextEncoder::for_model(tmp.path(), 16)
        .unwrap()
        .cuts_prefixes());
}
