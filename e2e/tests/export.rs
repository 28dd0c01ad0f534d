//! The export stage in the chain: the merged checkpoint it writes classifies the test split
//! exactly as the evaluate stage did with base + adapter, it is up to date on a rerun, and it
//! follows the adapter and `export.dtype`.

use candle_core::{DType, Device};
use e2e::{parquet_source, run_chain, stage_dir, tiny_config};
use export::Outcome;
use lora_classifier::{Checkpoint, SequenceClassifier};
use pipeline::config::ExportDtype;
use pipeline::predictions::{Predictions, PREDICTIONS_FILE};
use pipeline::tokens::TokenSplit;
use pipeline::{Layout, Split, StageId};

#[test]
fn the_export_classifies_as_evaluate_did_and_reruns_only_when_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = parquet_source(&tmp.path().join("imdb"), 32).unwrap();
    let mut c = tiny_config(&tmp.path().join("artifacts"), &data);
    run_chain(&c).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = stage_dir(&c, StageId::Export);

    // Loaded as a plain checkpoint (no adapter), on the test split's tokens.
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = SequenceClassifier::new(&ckpt, None, 0, &Device::Cpu, DType::F32).unwrap();
    let tokens =
        TokenSplit::read(&stage_dir(&c, StageId::Tokenize).join(Layout::tokens_file(Split::Test)))
            .unwrap();
    let n = tokens.len();
    let ids = candle_core::Tensor::from_slice(&tokens.input_ids, (n, tokens.max_len), &Device::Cpu)
        .unwrap();
    let mask =
        candle_core::Tensor::from_slice(&tokens.attention_mask, (n, tokens.max_len), &Device::Cpu)
            .unwrap();
    let logits: Vec<Vec<f32>> = model
        .forward(&ids, &mask, lora_classifier::Mode::Inference)
        .unwrap()
        .to_vec2()
        .unwrap();
    let evaluated =
        Predictions::read_parquet(&stage_dir(&c, StageId::Evaluate).join(PREDICTIONS_FILE))
            .unwrap();
    assert_eq!(evaluated.prob_positive.len(), n);
    let ours: Vec<f64> = logits
        .iter()
        .map(|l| 1.0 / (1.0 + (l[0] as f64 - l[1] as f64).exp()))
        .collect();
    test_support::compare::assert_close(
        &ours,
        &evaluated.prob_positive,
        1e-5,
        "P(positive), the export's vs evaluate's",
    );

    // Nothing changed: up to date. A report setting is not the export's: still up to date.
    assert!(matches!(
        export::run(&c, false).unwrap(),
        Outcome::UpToDate { .. }
    ));
    c.report.formats = vec![pipeline::config::ImageFormat::Png];
    assert!(matches!(
        export::run(&c, false).unwrap(),
        Outcome::UpToDate { .. }
    ));
    // export.dtype is its key: a bf16 export, half the size.
    let f32_size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    c.export.dtype = ExportDtype::Bf16;
    assert!(matches!(
        export::run(&c, false).unwrap(),
        Outcome::Ran { .. }
    ));
    let bf16_size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(bf16_size * 10 < f32_size * 6, "{bf16_size} vs {f32_size}");
    // A retrained adapter: the export waits for train, then follows it.
    c.training.learning_rate *= 2.0;
    let err = format!("{:#}", export::run(&c, false).unwrap_err());
    assert!(err.contains("just train"), "{err}");
}
