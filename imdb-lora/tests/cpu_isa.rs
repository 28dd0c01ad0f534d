//! `IMDB_LORA_CPU_ISA`, the switch that picks the low-precision GEMMs' code, as a user meets it:
//! `amx` takes the AMX tiles where the CPU and OS allow them and otherwise says why and falls
//! back; `avx512` keeps the AVX-512 kernels; `portable` forces the fallback; anything else is
//! named and ignored. Through `imdb-lora
//! bench` on the committed tiny BERT fixture, whose line says what ran (`runs_on`).

use std::process::Command;

use serde_json::Value;

/// `imdb-lora bench` inference, one step, with `IMDB_LORA_CPU_ISA=value`: (runs_on, stderr).
fn bench(value: &str, precision: &[&str]) -> (String, String) {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/bert-tiny-lora/base"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_imdb-lora"))
        .env("IMDB_LORA_CPU_ISA", value)
        .args(["bench", "--model", model, "--only", "inference"])
        .args([
            "--batch", "2", "--seq", "8", "--steps", "1", "--warmup", "0",
        ])
        .args(precision)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    (line["runs_on"].as_str().unwrap().to_string(), stderr)
}

fn cpu_has_amx(feature: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == feature))
    })
}

#[test]
fn amx_runs_the_tiles_or_says_why_not() {
    for (precision, flag, name) in [
        (&["--dtype", "bf16"][..], "amx_bf16", "bf16"),
        (&["--int8"][..], "amx_int8", "int8"),
    ] {
        let (runs_on, stderr) = bench("amx", precision);
        if cpu_has_amx(flag) {
            assert_eq!(runs_on, format!("cpu {name} amx-{name}"), "{stderr}");
        } else {
            assert!(!runs_on.contains("amx"), "{runs_on}");
            assert!(
                stderr.contains("IMDB_LORA_CPU_ISA=amx: the CPU lacks amx_tile or amx_"),
                "{stderr}"
            );
            test_support::report_platform_skip(
                &format!("AMX {name} through imdb-lora bench"),
                &format!("this CPU lacks {flag}: checked the fallback and its warning"),
            );
        }
    }
}

#[test]
fn portable_is_forced_and_an_unknown_value_is_named() {
    let (runs_on, _) = bench("portable", &["--dtype", "bf16"]);
    assert_eq!(runs_on, "cpu bf16 portable");
    // avx512 is a choice, not a warning; it never runs the tiles.
    let (runs_on, stderr) = bench("avx512", &["--dtype", "bf16"]);
    assert!(
        !runs_on.contains("amx") && !stderr.contains("warning"),
        "{runs_on} {stderr}"
    );
    let (runs_on, stderr) = bench("avx-9000", &["--dtype", "bf16"]);
    assert!(!runs_on.contains("amx"), "{runs_on}");
    assert!(
        stderr.contains(
            r#"IMDB_LORA_CPU_ISA="avx-9000" is not one of ["portable", "avx512", "amx"]; ignored"#
        ),
        "{stderr}"
    );
}
