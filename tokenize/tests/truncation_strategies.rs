//! `model.truncation`: tail keeps a long review's last tokens (HF's `truncation_side="left"`)
//! and head_tail its first quarter and last three quarters of the row, special tokens kept
//! around them; a review that fits is encoded the same by every strategy. On the real
//! tokenizers and 20 real IMDb reviews longer than 128 tokens (fixtures/truncation).

mod common;

use common::fixture;
use text_encoder::{TextEncoder, Truncation};
use tokenizers::Tokenizer;

const MAX_LEN: usize = 128;

fn reviews() -> Vec<String> {
    let reviews: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("truncation/reviews.json")).unwrap())
            .unwrap();
    serde_json::from_value(reviews["texts"].clone()).unwrap()
}

fn check(model: &str, specials: (usize, usize)) {
    let file = fixture(model).join("tokenizer.json");
    let encoder = |t: Truncation| {
        TextEncoder::from_file(&file, MAX_LEN)
            .unwrap()
            .with_truncation(t)
    };
    // Every token, as the tokenizer gives them with no truncation (the reference).
    let mut plain = Tokenizer::from_file(&file).unwrap();
    plain.with_truncation(None).unwrap().with_padding(None);
    let texts = reviews();
    let head = encoder(Truncation::Head).encode(&texts).unwrap();
    let (lead, trail) = specials;
    let budget = MAX_LEN - lead - trail;
    for t in [Truncation::Tail, Truncation::HeadTail] {
        let enc = encoder(t).encode(&texts).unwrap();
        assert_eq!(
            enc.truncated,
            texts.len(),
            "{model} {t}: every review is cut"
        );
        for (row, text) in texts.iter().enumerate() {
            let ids = &enc.input_ids[row * MAX_LEN..(row + 1) * MAX_LEN];
            let head_ids = &head.input_ids[row * MAX_LEN..(row + 1) * MAX_LEN];
            assert!(enc.attention_mask[row * MAX_LEN..(row + 1) * MAX_LEN]
                .iter()
                .all(|&m| m == 1));
            let all = plain.encode(text.as_str(), true).unwrap();
            let all = all.get_ids();
            assert!(all.len() > MAX_LEN);
            // The special tokens where HF puts them.
            assert_eq!(ids[..lead], all[..lead], "{model} {t} row {row}");
            assert_eq!(ids[MAX_LEN - trail..], all[all.len() - trail..]);
            let kept_head = if t == Truncation::Tail { 0 } else { budget / 4 };
            let kept_tail = budget - kept_head;
            // The head part is the head strategy's (HF's default truncation) first tokens...
            assert_eq!(
                ids[lead..lead + kept_head],
                head_ids[lead..lead + kept_head],
                "{model} {t} row {row}"
            );
            // ... and the tail part the text's last tokens.
            let content_end = all.len() - trail;
            assert_eq!(
                ids[lead + kept_head..MAX_LEN - trail],
                all[content_end - kept_tail..content_end],
                "{model} {t} row {row}"
            );
        }
    }
    // Reviews that fit: the same rows whatever the strategy.
    let short = [
        "A fine film.",
        "Dull.",
        "I laughed, I cried; then I left early.",
    ];
    let want = encoder(Truncation::Head).encode(&short).unwrap();
    for t in [Truncation::Tail, Truncation::HeadTail] {
        assert_eq!(encoder(t).encode(&short).unwrap(), want, "{model} {t}");
    }
}

#[test]
fn bert_keeps_cls_and_sep_around_the_kept_tokens() {
    check("bert-tiny-lora/base", (1, 1));
}

#[test]
fn gpt2_has_no_special_tokens_to_keep() {
    check("gpt2-tiny-lora/base", (0, 0));
}
