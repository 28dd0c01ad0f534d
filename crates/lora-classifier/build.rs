//! With the `cuda` feature: src/cuda/kernels.cu → PTX (see ptx-build).
fn main() {
    ptx_build::compile("src/cuda/kernels.cu", "lora_kernels.ptx");
}
