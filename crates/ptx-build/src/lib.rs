//! For build scripts of crates with a `cuda` feature: compiles a CUDA source to PTX with nvcc
//! into OUT_DIR, for the crate to `include_str!`. nvcc is found through NVCC, CUDA_HOME/bin or
//! PATH (`just build-cuda` provides one); the PTX targets CUDA_COMPUTE_CAP (default 80: PTX
//! that any GPU from Ampere on compiles when the module loads).

use std::path::PathBuf;
use std::process::Command;

/// Compiles `source` (relative to the crate) to `$OUT_DIR/<ptx_name>` when the crate is built
/// with its `cuda` feature; does nothing otherwise.
pub fn compile(source: &str, ptx_name: &str) {
    println!("cargo::rerun-if-changed={source}");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join(ptx_name);
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): the cuda feature needs nvcc; `just build-cuda` provides one",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on {source}");
}
