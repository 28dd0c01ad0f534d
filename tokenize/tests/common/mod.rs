//! The fixture models' folders (their tokenizer.json files are the real MiniLM and GPT-2 ones).

pub use test_support::fixture;
