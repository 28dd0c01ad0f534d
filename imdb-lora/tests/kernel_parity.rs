//! The fused CPU kernels against candle's composed ops on the real all-MiniLM-L6-v2, at the size
//! training runs at (16 × 128) and at odd shapes (one row; 3 × 77, whose tensors are not
//! multiples of the kernels' 16,384-element chunks or of any row split): the logits, loss and
//! every LoRA gradient of a training step with dropout, two AdamW updates and merged inference
//! ([`imdb_lora::kernel_parity::compare`], which `imdb-lora check-kernels` runs too).
//!
//! The fixture tests run tensors of at most 6,144 elements, below one chunk, so only these
//! reach the multi-chunk and multi-task paths. The model is loaded once for all of them.

use std::sync::OnceLock;

use candle_core::{DType, Device};
use imdb_lora::kernel_parity::{compare, default_tolerance};
use lora_classifier::Checkpoint;

/// all-MiniLM-L6-v2 + LoRA on query and value: 6 layers × 2 modules × (A, B), and the
/// classifier's weight and bias.
const TRAINABLE: usize = 6 * 2 * 2 + 2;

fn minilm() -> Result<&'static Checkpoint, String> {
    static MODEL: OnceLock<Result<Checkpoint, String>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = test_support::real_model(test_support::MINILM, true)?;
            Checkpoint::open(&dir).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Every comparison within the dtype's tolerance, against a reference that is not all zeros,
/// and none missing.
fn check(ckpt: &Checkpoint, dtype: DType, batch: usize, seq: usize) {
    let comparisons = compare(ckpt, &Device::Cpu, dtype, batch, seq).unwrap();
    let what = format!("MiniLM {dtype:?} {batch} × {seq}");
    // Logits, loss; a gradient per trainable tensor; merged logits. The AdamW comparisons are
    // made only where a fused update runs (a GPU): on the CPU both sides are one code path.
    assert_eq!(comparisons.len(), 2 + TRAINABLE + 1, "{what}");
    assert!(
        !comparisons.iter().any(|c| c.check.starts_with("adamw")),
        "{what}: the CPU runs no fused AdamW, so comparing it with the composed one checks nothing"
    );
    assert_eq!(
        comparisons
            .iter()
            .filter(|c| c.check.starts_with("grad ") && c.check.contains(".lora_A."))
            .count(),
        12,
        "{what}: a gradient for every lora_A"
    );
    let tolerance = default_tolerance(dtype);
    let failures: Vec<String> = comparisons
        .iter()
        .filter(|c| !(c.rel_err <= tolerance && c.reference_scale > 0.0))
        .map(|c| {
            format!(
                "{}: relative error {:e} (max |diff| {:e}, reference max {:e})",
                c.check, c.rel_err, c.max_abs_err, c.reference_scale
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{what}, tolerance {tolerance:e}:\n{}",
        failures.join("\n")
    );
    let worst = comparisons
        .iter()
        .max_by(|a, b| a.rel_err.total_cmp(&b.rel_err))
        .unwrap();
    eprintln!(
        "{what}: largest relative error {:e} ({}), tolerance {tolerance:e}",
        worst.rel_err, worst.check
    );
}

#[test]
fn fused_kernels_match_composed_ops_at_16_x_128() {
    let ckpt = test_support::require!(minilm());
    check(ckpt, DType::F32, 16, 128);
}

#[test]
fn fused_kernels_match_composed_ops_for_one_row() {
    let ckpt = test_support::require!(minilm());
    check(ckpt, DType::F32, 1, 128);
}

#[test]
fn fused_kernels_match_composed_ops_at_3_x_77() {
    let ckpt = test_support::require!(minilm());
    check(ckpt, DType::F32, 3, 77);
}
