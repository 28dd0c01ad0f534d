//! The fused CPU kernels against candle's composed ops on the real all-MiniLM-L6-v2, at the size
//! training runs at (16 × 128) and at odd shapes (one row; 3 × 77, whose tensors are not
//! multiples of the kernels' 16,384-element chunks or of any row split): the logits, loss and
//! every LoRA gradient of a training step with dropout (by autograd, and by the hand-written
//! backward pass train runs), two AdamW updates and merged inference
//! ([`imdb_lora::kernel_parity::compare`]), as `imdb-lora check-kernels` reports them: the test
//! runs the tool users run. In a process of its own the comparison also runs on a main thread,
//! as the tool does, and with one malloc arena: the composed reference ops allocate every
//! intermediate anew, and in a thread's own arena (a libtest thread, rayon's workers) those
//! pages are returned and faulted in again, so that the kernel zeroing pages took over half
//! of this test's time in-process (the whole suite: 31.9 s in-process, 29.4 s as a child, 2 vCPU
//! Zen 4). One arena is not the binaries' setting: it slows the tokenizer's threads.
//!
//! The fixture tests run tensors of at most 6,144 elements, below one chunk, so only these
//! reach the multi-chunk and multi-task paths.

use std::process::Command;

use serde_json::Value;

/// all-MiniLM-L6-v2 + LoRA on query and value: 6 layers × 2 modules × (A, B), and the
/// classifier's weight and bias.
const TRAINABLE: usize = 6 * 2 * 2 + 2;

/// One comparison, as a JSON line of `imdb-lora check-kernels`.
struct Comparison {
    check: String,
    max_abs_err: f64,
    rel_err: f64,
    reference_scale: f64,
    tolerance: f64,
}

/// `imdb-lora check-kernels` on the real MiniLM in f32 at `batch` × `seq`: its comparisons,
/// or why it cannot run.
fn compare(batch: usize, seq: usize) -> Result<Vec<Comparison>, String> {
    let dir = test_support::real_model(test_support::MINILM, true)?;
    // The allocator settings the binaries make (lora_classifier::tune_cpu_runtime), plus one
    // arena for every thread, which only the composed reference needs.
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let out = Command::new(env!("CARGO_BIN_EXE_imdb-lora"))
        .env(
            "GLIBC_TUNABLES",
            format!("{tunables}:glibc.malloc.arena_max=1").trim_start_matches(':'),
        )
        .args([
            "check-kernels",
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--model",
        ])
        .arg(&dir)
        .args(["--batch", &batch.to_string(), "--seq", &seq.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Over tolerance is exit status 1 with every line printed: the assertions below say which.
    assert!(
        out.status.success() || stderr.contains("over tolerance"),
        "check-kernels failed: {stderr}"
    );
    let number = |line: &Value, key: &str| {
        line[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    Ok(stdout
        .lines()
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            Comparison {
                check: line["check"].as_str().unwrap().to_string(),
                max_abs_err: number(&line, "max_abs_err"),
                rel_err: number(&line, "rel_err"),
                reference_scale: number(&line, "reference_scale"),
                tolerance: number(&line, "tolerance"),
            }
        })
        .collect())
}

/// Every comparison within the dtype's tolerance, against a reference that is not all zeros,
/// and none missing.
fn check(comparisons: Vec<Comparison>, batch: usize, seq: usize) {
    let what = format!("MiniLM f32 {batch} × {seq}");
    // Logits, loss; a gradient per trainable tensor; the hand-written backward pass's loss and
    // gradients (BERT); merged logits. The AdamW comparisons are made only where a fused update
    // runs (a GPU): on the CPU both sides are one code path.
    assert_eq!(
        comparisons.len(),
        2 + TRAINABLE + (1 + TRAINABLE) + 1,
        "{what}"
    );
    assert_eq!(
        comparisons
            .iter()
            .filter(|c| c.check.starts_with("hand-written grad ") && c.check.contains(".lora_A."))
            .count(),
        12,
        "{what}: a hand-written gradient for every lora_A"
    );
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
    let tolerance = imdb_lora::kernel_parity::default_tolerance(candle_core::DType::F32);
    assert!(
        comparisons.iter().all(|c| c.tolerance == tolerance),
        "{what}"
    );
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
    check(test_support::require!(compare(16, 128)), 16, 128);
}

#[test]
fn fused_kernels_match_composed_ops_for_one_row() {
    check(test_support::require!(compare(1, 128)), 1, 128);
}

#[test]
fn fused_kernels_match_composed_ops_at_3_x_77() {
    check(test_support::require!(compare(3, 77)), 3, 77);
}
