#!/usr/bin/env bash
# A build-only CUDA 13.0 toolkit from NVIDIA's PyPI wheels, into a folder of
# the project (git-ignored), for `cargo build --features cuda`. No system
# change, no Debian CUDA packages. Prints the environment to build with.
#
#   scripts/cuda-toolkit.sh .cuda          # links against stubs (≈105 MB of wheels)
#   FULL_LIBS=1 scripts/cuda-toolkit.sh .cuda   # the real cuBLAS/cuRAND/NVRTC (≈680 MB)
#
# Versions are pinned to CUDA 13.0 to match the GPU machines (driver 580, CUDA 13.0
# user-space libraries in their PyTorch install) and cudarc's supported nvcc range.
set -euo pipefail
base=$(realpath -m "${1:?usage: cuda-toolkit.sh DIR}")
wheels=$base/wheels root=$base/root
toolkit=$root/nvidia/cu13   # every CUDA-13 wheel unpacks into nvidia/cu13/{bin,include,lib,nvvm}
if [ -x "$toolkit/bin/nvcc" ] && [ -e "$toolkit/lib/stubs/libcuda.so" ]; then
    echo "CUDA_HOME=$toolkit"; exit 0
fi
mkdir -p "$wheels" "$root"
pkgs=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
[ "${FULL_LIBS:-0}" = 1 ] && pkgs+=(nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" "${pkgs[@]}"
for w in "$wheels"/*.whl; do unzip -q -o "$w" -x '*.dist-info/*' -d "$root"; done
chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/*
ln -sfn lib "$toolkit/lib64"
cd "$toolkit/lib"
mkdir -p stubs
ln -sf libcudart.so.13 libcudart.so

# cudarc's declarations name every symbol the binaries may link against.
cudarc=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | sort | tail -1)
[ -n "$cudarc" ] || { echo "run 'cargo fetch' first: cudarc's sources are needed" >&2; exit 1; }
symbols() { awk '/extern "C" \{/{f=1;next} f&&/fn [A-Za-z_][A-Za-z0-9_]*\(/{match($0,/fn [A-Za-z_][A-Za-z0-9_]*\(/);print substr($0,RSTART+3,RLENGTH-4);f=0}' "$cudarc/src/$1/sys/mod.rs"; }
# An empty-bodied shared library with the given soname: enough to link, never loaded at
# run time (the real libraries come from the GPU machine's driver and CUDA install).
stub() {
    sort -u | awk '{print "void " $1 "(void){}"}' >"stubs/$1.c"
    gcc -shared -fPIC -Wl,-soname,"$2" -o "stubs/$1.so" "stubs/$1.c"
}
{ gcc -E -P -I"$toolkit/include" -x c "$toolkit/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t('
  symbols driver; } | stub libcuda libcuda.so.1
if [ "${FULL_LIBS:-0}" = 1 ]; then
    for l in cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done
    ln -sf libcurand.so.10 libcurand.so
else
    symbols cublas | stub libcublas libcublas.so.13
    symbols cublaslt | stub libcublasLt libcublasLt.so.13
    symbols curand | stub libcurand libcurand.so.10
    symbols nvrtc | stub libnvrtc libnvrtc.so.13
    for l in cublas cublasLt curand nvrtc; do ln -sf "stubs/lib$l.so" "lib$l.so"; done
fi
echo "CUDA_HOME=$toolkit"
