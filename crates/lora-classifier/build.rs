//! With the `cuda` feature: compiles src/cuda/kernels.cu to PTX with nvcc (found through NVCC,
//! CUDA_HOME or PATH), for CUDA_COMPUTE_CAP (default 80: PTX that any GPU from Ampere on
//! compiles at load time). Without it there is nothing to build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/cuda/kernels.cu");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("lora_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg("src/cuda/kernels.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): the cuda feature needs nvcc; `just build-cuda` provides one",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on src/cuda/kernels.cu");
}
