//! Fixture helpers: the reference answers of HF transformers + PEFT in the repository's
//! `fixtures/` (made by fixtures/generate.py).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use lora_classifier::Checkpoint;

pub fn fixtures() -> PathBuf {
    test_support::fixtures_dir()
}

pub struct Fixture {
    pub dir: PathBuf,
    pub ckpt: Checkpoint,
    pub expected: HashMap<String, Tensor>,
    pub json: serde_json::Value,
    pub ids: Tensor,
    pub mask: Tensor,
    pub labels: Tensor,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let dir = fixtures().join(name);
        let ckpt = Checkpoint::open(&dir.join("base")).unwrap();
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let u32_of = |k: &str| expected[k].to_dtype(DType::U32).unwrap();
        let (ids, mask, labels) = (
            u32_of("input_ids"),
            u32_of("attention_mask"),
            u32_of("labels"),
        );
        Fixture {
            dir,
            ckpt,
            expected,
            json,
            ids,
            mask,
            labels,
        }
    }

    pub fn adapter(&self) -> PathBuf {
        self.dir.join("adapter")
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.expected
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in expected.safetensors"))
    }
}

/// All elements as f32, row-major.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Where `a` and `b` differ most (`test_support::compare`): shapes must be equal and every
/// value finite, or the test fails naming the element.
#[track_caller]
pub fn diff(a: &Tensor, b: &Tensor, what: &str) -> test_support::compare::Diff {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    test_support::compare::diff_of(&values(a), &values(b), what)
}

/// Max absolute difference, asserting equal shapes and finite values (a NaN fails).
#[track_caller]
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    diff(a, b, "max_diff").max_abs as f32
}

#[track_caller]
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let d = diff(a, b, what);
    assert!(
        d.max_abs <= f64::from(tol),
        "{what}: {d} > tolerance {tol:e}\n got {a}\n expected {b}"
    );
}

pub fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32).unwrap().to_vec0::<f32>().unwrap()
}

/// Runs this test binary's `test` again with the portable bf16/int8 kernels forced (those of a
/// CPU without AVX512-BF16/VNNI), checks that it passed there, and says so in the test output
/// (the child's pass would otherwise be invisible), with the child's " off by " lines. Inside
/// that child it only checks that the portable kernels are the ones running.
pub fn again_with_portable_kernels(test: &str) {
    use lora_classifier::{cpu_kernels, CPU_ISA_ENV};
    use std::io::Write;
    if std::env::var(CPU_ISA_ENV).as_deref() == Ok("portable") {
        assert_eq!(cpu_kernels("bf16"), Some("portable"));
        assert_eq!(cpu_kernels("int8"), Some("portable"));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads", "1", "--nocapture"])
        .env(CPU_ISA_ENV, "portable")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} with {CPU_ISA_ENV}=portable:\n{stdout}\n{stderr}"
    );
    let mut err = std::io::stderr().lock();
    for line in stderr.lines().filter(|l| l.contains(" off by ")) {
        let _ = writeln!(err, "portable kernels: {line}");
    }
    let _ = writeln!(
        err,
        "{test}: passed again with {CPU_ISA_ENV}=portable (the kernels of a CPU without AVX512-BF16/VNNI)"
    );
}

/// 16 real reviews at 128 tokens, and their labels (all negative: the cross-entropy's targets):
/// the first 16 of fixtures/truncation, HF's token ids, which the pipeline's tokenizer
/// reproduces (the tokenize crate's tests), every review cut at 128. Rows 8–15 are cut shorter
/// (to 120 … 9 tokens, ending in [SEP], then [PAD]), as shorter reviews come out, so that the
/// batch is padded too. (This crate's tests have no tokenizer or parquet reader.)
pub fn sixteen_reviews() -> (Tensor, Tensor, Tensor) {
    let dir = test_support::fixture("truncation");
    let t = candle_core::safetensors::load(dir.join("minilm.safetensors"), &Device::Cpu).unwrap();
    let u32_rows = |k: &str| -> Vec<Vec<u32>> {
        t[k].i(0..16)
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    let (mut ids, mut mask) = (u32_rows("input_ids"), u32_rows("attention_mask"));
    let reviews: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reviews.json")).unwrap()).unwrap();
    let labels: Vec<u32> = serde_json::from_value(reviews["labels"].clone()).unwrap();
    const SEP: u32 = 102;
    for (row, len) in (8..16).zip([120, 101, 90, 77, 64, 45, 30, 9]) {
        ids[row][len - 1] = SEP;
        ids[row][len..].fill(0);
        mask[row][len..].fill(0);
    }
    let dev = &Device::Cpu;
    (
        Tensor::new(ids, dev).unwrap(),
        Tensor::new(mask, dev).unwrap(),
        Tensor::new(&labels[..16], dev).unwrap(),
    )
}
