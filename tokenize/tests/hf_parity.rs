//! Token ids and masks equal to those HF transformers computed (fixtures/, made by
//! fixtures/generate.py): the tiny models' texts, and real IMDb reviews truncated at 128 tokens
//! by the MiniLM (WordPiece) and GPT-2 (byte-level BPE) tokenizers.

mod common;

use std::path::Path;

use common::fixture;

use safetensors::{Dtype, SafeTensors};
use text_encoder::TextEncoder;
use tokenizers::Tokenizer;

fn i64_tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<u32>) {
    let view = st.tensor(name).unwrap();
    assert_eq!(view.dtype(), Dtype::I64, "{name}");
    let values = view
        .data()
        .chunks_exact(8)
        .map(|b| u32::try_from(i64::from_le_bytes(b.try_into().unwrap())).unwrap())
        .collect();
    (view.shape().to_vec(), values)
}

/// `input_ids` and `attention_mask` of an expected-tokens file: shape, ids, mask.
fn expected_tokens(file: &Path) -> (Vec<usize>, Vec<u32>, Vec<u32>) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, ids) = i64_tensor(&st, "input_ids");
    let (mask_shape, mask) = i64_tensor(&st, "attention_mask");
    assert_eq!(shape, mask_shape, "{}", file.display());
    (shape, ids, mask)
}

/// Our ids and mask for the fixture's texts equal HF's, byte for byte.
fn check_fixture(name: &str, pad_id: u32) {
    let dir = fixture(name);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(expected["texts"].clone()).unwrap();
    let max_len = expected["max_len"].as_u64().unwrap() as usize;
    let (shape, ids, mask) = expected_tokens(&dir.join("expected.safetensors"));
    assert_eq!(shape, [texts.len(), max_len]);

    let text_encoder = TextEncoder::for_model(&dir.join("base"), max_len).unwrap();
    assert_eq!(text_encoder.pad_id(), pad_id);
    let encoded = text_encoder.encode(&texts).unwrap();
    for (row, text) in texts.iter().enumerate() {
        let span = row * max_len..(row + 1) * max_len;
        assert_eq!(encoded.input_ids[span.clone()], ids[span.clone()], "{text}");
        assert_eq!(encoded.attention_mask[span.clone()], mask[span], "{text}");
    }
    assert_eq!(encoded.truncated, 0);
}

#[test]
fn bert_ids_equal_hf() {
    check_fixture("bert-tiny-lora", 0);
}

#[test]
fn gpt2_ids_equal_hf_padded_with_eos() {
    check_fixture("gpt2-tiny-lora", 50256);
}

/// Real reviews longer than 128 tokens, through the tokenize stage's encoder (the prefix
/// shortcut it takes on long texts, and whole texts), equal HF's
/// `tokenizer(texts, padding="max_length", truncation=True, max_length=128)`.
fn check_truncated_reviews(tokenizer_of: &str, expected: &str, pad_id: u32) {
    let reviews: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("truncation/reviews.json")).unwrap())
            .unwrap();
    let texts: Vec<String> = serde_json::from_value(reviews["texts"].clone()).unwrap();
    let max_len = reviews["max_len"].as_u64().unwrap() as usize;
    let (shape, ids, mask) = expected_tokens(&fixture(expected));
    assert_eq!(shape, [texts.len(), max_len]);
    assert!(texts.len() >= 20, "{} reviews", texts.len());

    // The tiny fixture model's tokenizer.json is the real one; its config allows only 64
    // positions, so the encoder is made from the tokenizer file as the stage does after that check.
    let tokenizer = fixture(tokenizer_of).join("tokenizer.json");
    let fast = TextEncoder::from_file(&tokenizer, max_len).unwrap();
    assert!(fast.cuts_prefixes());
    assert_eq!(fast.pad_id(), pad_id);
    let whole = TextEncoder::from_file(&tokenizer, max_len)
        .unwrap()
        .with_prefix_cut(false);
    for encoder in [fast, whole] {
        let encoded = encoder.encode(&texts).unwrap();
        assert_eq!(encoded.truncated, texts.len(), "every review is cut");
        for (row, text) in texts.iter().enumerate() {
            let span = row * max_len..(row + 1) * max_len;
            assert_eq!(
                encoded.input_ids[span.clone()],
                ids[span.clone()],
                "{tokenizer_of} review {row}: {text}"
            );
            assert_eq!(encoded.attention_mask[span.clone()], mask[span], "{text}");
        }
    }
}

#[test]
fn minilm_truncated_reviews_equal_hf() {
    check_truncated_reviews("bert-tiny-lora/base", "truncation/minilm.safetensors", 0);
}

#[test]
fn gpt2_truncated_reviews_equal_hf() {
    check_truncated_reviews("gpt2-tiny-lora/base", "truncation/gpt2.safetensors", 50256);
}

#[test]
fn minilm_truncates_a_long_review_to_max_len_ending_in_sep() {
    // The fixture's tokenizer.json is all-MiniLM-L6-v2's, with its own padding and truncation
    // to 128 set inside.
    let file = fixture("bert-tiny-lora/base/tokenizer.json");
    let review =
        "I went in expecting little, and this film surprised me at every turn. ".repeat(40);
    let short = "Not bad at all.";
    // The untruncated ids, from the tokenizer with its own settings removed.
    let mut plain = Tokenizer::from_file(&file).unwrap();
    plain.with_truncation(None).unwrap().with_padding(None);
    let full = plain
        .encode(review.as_str(), true)
        .unwrap()
        .get_ids()
        .to_vec();
    let short_ids = plain.encode(short, true).unwrap().get_ids().to_vec();
    assert!(full.len() > 300);

    // 64 and 256 differ from the 128 that tokenizer.json sets for itself.
    for max_len in [64, 256] {
        let text_encoder = TextEncoder::from_file(&file, max_len).unwrap();
        assert_eq!(text_encoder.pad_id(), 0);
        let encoded = text_encoder.encode(&[review.as_str(), short]).unwrap();
        assert_eq!(encoded.truncated, 1);
        let (long, padded) = encoded.input_ids.split_at(max_len);
        // [CLS] + the first max_len - 2 word pieces + [SEP].
        let mut expected = full[..max_len - 1].to_vec();
        expected.push(102);
        assert_eq!(long, expected);
        assert_eq!(long[0], 101);
        assert!(encoded.attention_mask[..max_len].iter().all(|&m| m == 1));
        // The short one: its ids, then [PAD] = 0 with mask 0.
        assert_eq!(padded[..short_ids.len()], short_ids);
        assert!(padded[short_ids.len()..].iter().all(|&id| id == 0));
        let mask = &encoded.attention_mask[max_len..];
        assert_eq!(mask.iter().sum::<u32>() as usize, short_ids.len());
    }
}

#[test]
fn max_len_beyond_the_model_positions_is_refused() {
    let err = TextEncoder::for_model(&fixture("bert-tiny-lora/base"), 65)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("64 positions"), "{err}");
}
