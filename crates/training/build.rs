//! With the `cuda` feature: src/cuda/optim.cu → PTX (see ptx-build).
fn main() {
    ptx_build::compile("src/cuda/optim.cu", "optim_kernels.ptx");
}
