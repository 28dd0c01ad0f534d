# LoRA fine-tuning of a transformer on IMDb reviews: one recipe per stage.
# Each stage skips itself when its inputs and config did not change.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Use the shared offline Hugging Face cache beside the project when HF_HOME is unset.
export HF_HOME := env_var_or_default("HF_HOME", if path_exists(justfile_directory() / "../shared/hf-home") == "true" { justfile_directory() / "../shared/hf-home" } else { "" })
export HF_HUB_OFFLINE := env_var_or_default("HF_HUB_OFFLINE", if path_exists(justfile_directory() / "../shared/hf-home") == "true" { "1" } else { "0" })

config := env_var_or_default("PIPELINE_CONFIG", "pipeline.yaml")
bin := justfile_directory() / "target/release"

# List the recipes.
default:
    @just --list

# Build the stage binaries (release).
build:
    cargo build --release --bins

# Run every stage in order: data-prep → tokenize → train → evaluate → report.
all *ARGS: build
    {{bin}}/data-prep --config {{config}} {{ARGS}}
    {{bin}}/tokenize --config {{config}} {{ARGS}}
    {{bin}}/train --config {{config}} {{ARGS}}
    {{bin}}/evaluate --config {{config}} {{ARGS}}
    {{bin}}/report --config {{config}} {{ARGS}}

# Load IMDb, sample train, split test into test/validation → artifacts/data.
data-prep *ARGS: build
    {{bin}}/data-prep --config {{config}} {{ARGS}}

# Tokenize every split to padded tensors → artifacts/tokens.
tokenize *ARGS: build
    {{bin}}/tokenize --config {{config}} {{ARGS}}

# Fine-tune the model with LoRA → artifacts/train (adapter, history, summary).
train *ARGS: build
    {{bin}}/train --config {{config}} {{ARGS}}

# Evaluate on the test split → artifacts/evaluate (metrics, predictions).
evaluate *ARGS: build
    {{bin}}/evaluate --config {{config}} {{ARGS}}

# Render figures and the HTML/Markdown report → artifacts/report.
report *ARGS: build
    {{bin}}/report --config {{config}} {{ARGS}}

# Classify texts given as arguments (or stdin with no arguments).
predict *TEXTS: build
    {{bin}}/predict --config {{config}} {{TEXTS}}

# Run the whole test suite.
test:
    cargo test --release --workspace

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings

# Throughput benchmarks (JSON lines).
bench:
    cargo bench -p lora-classifier
