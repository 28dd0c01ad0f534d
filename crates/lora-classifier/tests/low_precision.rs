//! The CPU's bf16 and int8 frozen weights (packed GEMMs with f32 activations) in whole models:
//! against the fixtures of transformers + PEFT (f32) within the tolerances of the precision,
//! and against candle's composed ops on the same rounded weights (the reference) on batch 1,
//! single-token and full-length sequences with padding. Each test runs again in a child
//! process with `IMDB_LORA_CPU_ISA=portable`: the fallback a CPU without AVX512-BF16/VNNI runs.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::loss::cross_entropy;
use candle_nn::ops::softmax_last_dim;
use common::{max_diff, Fixture};
use lora_classifier::{cpu_kernels, Kernels, Mode, SequenceClassifier, CPU_ISA_ENV};

const ARCHS: [&str; 2] = ["bert-tiny-lora", "gpt2-tiny-lora"];

fn model(f: &Fixture, dtype: DType, kernels: Kernels) -> SequenceClassifier {
    let mut m =
        SequenceClassifier::load_adapter(&f.ckpt, &f.adapter(), &Device::Cpu, dtype).unwrap();
    m.set_kernels(kernels);
    m
}

fn probs(logits: &Tensor) -> Tensor {
    softmax_last_dim(logits).unwrap()
}

/// max |a − b| / max |b|
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    max_diff(a, b) / scale.to_scalar::<f32>().unwrap().max(1e-30)
}

/// Runs this test binary's `test` again with the portable kernels forced, and checks it
/// passed there (skipped inside that child).
fn again_with_portable_kernels(test: &str) {
    if std::env::var(CPU_ISA_ENV).as_deref() == Ok("portable") {
        assert_eq!(cpu_kernels("bf16"), Some("portable"));
        assert_eq!(cpu_kernels("int8"), Some("portable"));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads", "1"])
        .env(CPU_ISA_ENV, "portable")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} with {CPU_ISA_ENV}=portable:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// bf16 weights: probabilities within 2e-2 of PEFT's f32 answer, the loss within 2e-2, every
/// gradient within 1e-1 relative (the tolerances of the GPU's bf16 check).
#[test]
fn bf16_weights_match_the_f32_fixture_within_bf16_tolerance() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let m = model(&f, DType::BF16, Kernels::Auto);
        let logits = m.forward(&f.ids, &f.mask, Mode::Eval).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        let d = max_diff(&probs(&logits), &probs(f.get("lora_logits")));
        assert!(d <= 2e-2, "{name}: probabilities differ by {d}");
        let loss = cross_entropy(&logits, &f.labels).unwrap();
        let want = f.json["initial_loss"].as_f64().unwrap() as f32;
        let got = loss.to_scalar::<f32>().unwrap();
        assert!((got - want).abs() <= 2e-2, "{name}: loss {got} vs {want}");
        let grads = loss.backward().unwrap();
        for (pname, var) in m.trainable() {
            let g = grads
                .get(&var)
                .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let r = rel(g, f.get(&format!("grad/{pname}")));
            assert!(
                r <= 1e-1,
                "{name}: gradient of {pname} off by {r} (relative)"
            );
        }
        let mut m = m;
        m.merge().unwrap();
        let merged = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        let d = max_diff(&probs(&merged), &probs(f.get("lora_logits")));
        assert!(d <= 2e-2, "{name}: merged probabilities differ by {d}");
    }
    again_with_portable_kernels("bf16_weights_match_the_f32_fixture_within_bf16_tolerance");
}

/// int8 (merged, quantized) inference: probabilities within 5e-2 of PEFT's f32 answer (the merged adapter computes the same).
#[test]
fn int8_inference_matches_the_f32_fixture_within_int8_tolerance() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let mut m = model(&f, DType::F32, Kernels::Auto);
        m.merge().unwrap();
        m.quantize_int8().unwrap();
        let logits = m.forward(&f.ids, &f.mask, Mode::Inference).unwrap();
        let d = max_diff(&probs(&logits), &probs(f.get("lora_logits")));
        assert!(d <= 5e-2, "{name}: int8 probabilities differ by {d}");
    }
    again_with_portable_kernels("int8_inference_matches_the_f32_fixture_within_int8_tolerance");
}

/// The packed bf16 kernels against the composed ops on the same bf16 weights, in train mode
/// with dropout: logits, loss and every gradient, on one row of one token, one full-length
/// row, and a padded batch of odd length.
#[test]
fn bf16_kernels_equal_the_composed_ops_on_odd_batches() {
    for name in ARCHS {
        let f = Fixture::load(name);
        let (fused, composed) = (
            model(&f, DType::BF16, Kernels::Auto),
            model(&f, DType::BF16, Kernels::Composed),
        );
        // Both tiny models have 64 positions.
        let max_len = 64;
        for (batch, seq) in [(1, 1), (1, max_len), (5, 37)] {
            let ids: Vec<u32> = (0..batch * seq)
                .map(|i| (1000 + 7919 * i as u32) % 30000)
                .collect();
            // Row i keeps seq − i tokens (row 0 unpadded).
            let mask: Vec<u32> = (0..batch * seq)
                .map(|i| u32::from(i % seq < seq - (i / seq).min(seq - 1)))
                .collect();
            let ids = Tensor::from_vec(ids, (batch, seq), &Device::Cpu).unwrap();
            let mask = Tensor::from_vec(mask, (batch, seq), &Device::Cpu).unwrap();
            let labels = Tensor::from_vec(
                (0..batch as u32).map(|i| i % 2).collect(),
                batch,
                &Device::Cpu,
            )
            .unwrap();
            let what = format!("{name} batch {batch} seq {seq}");
            let run = |m: &SequenceClassifier| {
                let logits = m
                    .forward(&ids, &mask, Mode::Train { dropout_seed: 3 })
                    .unwrap();
                let loss = cross_entropy(&logits, &labels).unwrap();
                let grads = loss.backward().unwrap();
                (logits, grads)
            };
            let ((l1, g1), (l2, g2)) = (run(&fused), run(&composed));
            // The kernels round activations to bf16 where the composed ops keep f32.
            let r = rel(&l1, &l2);
            assert!(r <= 3e-2, "{what}: logits off by {r}");
            for ((pname, v1), (_, v2)) in fused.trainable().iter().zip(composed.trainable()) {
                let r = rel(g1.get(v1).unwrap(), g2.get(&v2).unwrap());
                assert!(r <= 1e-1, "{what}: gradient of {pname} off by {r}");
            }
        }
    }
    again_with_portable_kernels("bf16_kernels_equal_the_composed_ops_on_odd_batches");
}
