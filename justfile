# LoRA fine-tuning of a transformer on IMDb reviews: one recipe per stage.
# Each stage skips itself when its inputs and config did not change.

set shell := ["bash", "-euo", "pipefail", "-c"]
# Pass recipe arguments through as they were quoted ("$@").
set positional-arguments := true

# Use the shared offline Hugging Face cache beside the project when HF_HOME is unset.
export HF_HOME := env_var_or_default("HF_HOME", if path_exists(justfile_directory() / "../shared/hf-home") == "true" { justfile_directory() / "../shared/hf-home" } else { "" })
export HF_HUB_OFFLINE := env_var_or_default("HF_HUB_OFFLINE", if path_exists(justfile_directory() / "../shared/hf-home") == "true" { "1" } else { "0" })

config := env_var_or_default("PIPELINE_CONFIG", "pipeline.yaml")
bin := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target") / "release"

# List the recipes.
default:
    @just --list

# Build the stage binaries (release).
build:
    cargo build --release --bins

# Run every stage in order: data-prep → tokenize → train → evaluate → report.
all *ARGS: build
    {{bin}}/data-prep --config {{config}} "$@"
    {{bin}}/tokenize --config {{config}} "$@"
    {{bin}}/train --config {{config}} "$@"
    {{bin}}/evaluate --config {{config}} "$@"
    {{bin}}/report --config {{config}} "$@"

# Load IMDb, sample train, split test into test/validation → artifacts/data.
data-prep *ARGS: build
    {{bin}}/data-prep --config {{config}} "$@"

# Tokenize every split to padded tensors → artifacts/tokens.
tokenize *ARGS: build
    {{bin}}/tokenize --config {{config}} "$@"

# Fine-tune the model with LoRA → artifacts/train (adapter, history, summary).
train *ARGS: build
    {{bin}}/train --config {{config}} "$@"

# Evaluate on the test split → artifacts/evaluate (metrics, predictions).
evaluate *ARGS: build
    {{bin}}/evaluate --config {{config}} "$@"

# Render figures and the HTML/Markdown report → artifacts/report.
report *ARGS: build
    {{bin}}/report --config {{config}} "$@"

# Classify texts given as arguments (or stdin with no arguments).
predict *TEXTS: build
    {{bin}}/predict --config {{config}} "$@"

# The whole chain on a small slice of the real data, in its own artifacts folder.
smoke: build
    #!/usr/bin/env bash
    set -euo pipefail
    sets=(--set artifacts=artifacts-smoke --set data.max_train=200 --set data.max_validation=200
          --set data.max_test=400 --set training.epochs=1 --set training.checkpoint_every_steps=5)
    for stage in data-prep tokenize train evaluate report; do
        "{{bin}}/$stage" --config {{config}} "${sets[@]}"
    done
    "{{bin}}/predict" --config {{config}} "${sets[@]}" "A wonderful, moving film." "Dull and far too long."

# Build the stages and imdb-lora with CUDA for Hopper GPUs → target/cuda/release (toolkit from PyPI wheels in .cuda/).
build-cuda:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo fetch --quiet
    cuda_home=$(scripts/cuda-toolkit.sh .cuda | sed -n 's/^CUDA_HOME=//p')
    export CUDA_HOME=$cuda_home PATH=$cuda_home/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    cargo build --release --features cuda -p train -p evaluate -p imdb-lora --target-dir target/cuda
    ls -la target/cuda/release/imdb-lora

# The bundle to copy to a GPU machine (.gpu/bundle): imdb-lora (CUDA), MiniLM in bf16, the fixture, the real split's tokens.
gpu-bundle:
    cargo build --release -p imdb-lora
    scripts/gpu-bundle.sh

# The GPU check's whole logic on this CPU, on a tiny slice (what scripts/gpu-check.sh runs on a GPU).
gpu-check-cpu:
    cargo build --release -p imdb-lora
    scripts/gpu-bundle.sh --bin {{bin}}/imdb-lora --host-bin {{bin}}/imdb-lora --out .gpu/cpu-bundle --tiny
    scripts/gpu-check.sh --device cpu --bundle .gpu/cpu-bundle --out .gpu/cpu-check --quick

# Run the whole test suite.
test:
    cargo test --release --workspace

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings

# Throughput benchmarks (JSON lines): tokenizer, then the model's training step and inference (MiniLM, CPU).
bench *ARGS:
    cargo bench -p tokenize --bench tokenize
    cargo build --release -p imdb-lora
    {{bin}}/imdb-lora bench "$@"
