# LoRA fine-tuning of a transformer on IMDb reviews: one recipe per stage.
# Each stage skips itself when its inputs and config did not change.

set shell := ["bash", "-euo", "pipefail", "-c"]
# Pass recipe arguments through as they were quoted ("$@").
set positional-arguments := true

# The programs find the standard Hugging Face cache themselves (HF_HUB_CACHE, else HF_HOME/hub,
# else ~/.cache/huggingface/hub). Only when neither variable is set and the offline cache
# ../shared/hf-home is beside the project do the recipes set HF_HOME to it (and HF_HUB_OFFLINE,
# unless set): `hf_env` holds those assignments, and is empty (nothing set) otherwise.
shared_hf_home := justfile_directory() / "../shared/hf-home"
hf_env := if env_var_or_default("HF_HOME", "") + env_var_or_default("HF_HUB_CACHE", "") != "" { "" } else if path_exists(shared_hf_home) == "true" { "HF_HOME=" + quote(shared_hf_home) + " HF_HUB_OFFLINE=" + quote(env_var_or_default("HF_HUB_OFFLINE", "1")) } else { "" }
# Runs a command with `hf_env` added to the environment.
run := "env " + hf_env

config := env_var_or_default("PIPELINE_CONFIG", "pipeline.yaml")
bin := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target") / "release"

# List the recipes.
default:
    @just --list

# Build the stage binaries (release).
build:
    cargo build --release --bins

# Each stage that runs appends its wall and CPU time and the load average to
# <artifacts>/timings.jsonl (`just results` reads them).
# Run every stage in pipeline order (the list: `imdb-lora stages`), each as `imdb-lora <stage>`.
all *ARGS: build
    #!/usr/bin/env bash
    set -euo pipefail
    # "<stage> <folder>" lines in pipeline order, from the registry (crates/pipeline/src/graph.rs).
    stages=$({{bin}}/imdb-lora stages)
    # The artifacts root, as any stage reads the config (the first one, here).
    root=$({{run}} {{bin}}/imdb-lora "${stages%% *}" --config {{config}} "$@" --print-config | sed -n "s/^artifacts: //p" | tr -d "'\"")
    while read -r stage dir <&3; do
        scripts/timed.sh "$root/timings.jsonl" "$stage" --stamp "$root/$dir/stamp.json" -- \
            {{run}} {{bin}}/imdb-lora "$stage" --config {{config}} "$@"
    done 3<<<"$stages"

# Load IMDb, sample train, split test into test/validation → artifacts/data.
data-prep *ARGS: build
    {{run}} {{bin}}/data-prep --config {{config}} "$@"

# Tokenize every split to padded tensors → artifacts/tokens.
tokenize *ARGS: build
    {{run}} {{bin}}/tokenize --config {{config}} "$@"

# Fine-tune the model with LoRA → artifacts/train (adapter, history, summary).
train *ARGS: build
    {{run}} {{bin}}/train --config {{config}} "$@"

# Evaluate on the test split → artifacts/evaluate (metrics, predictions).
evaluate *ARGS: build
    {{run}} {{bin}}/evaluate --config {{config}} "$@"

# Render figures and the HTML/Markdown report → artifacts/report.
report *ARGS: build
    {{run}} {{bin}}/report --config {{config}} "$@"

# Merge the adapter into the model → artifacts/export, a Hugging Face checkpoint (transformers' pipeline, predict --model).
export *ARGS: build
    {{run}} {{bin}}/export --config {{config}} "$@"

# Classify texts given as arguments (or stdin with no arguments).
predict *TEXTS: build
    {{run}} {{bin}}/predict --config {{config}} "$@"

# e.g. just exp --grid training.learning_rate=2e-4,5e-4 --grid lora.r=8,16 --set model.truncation=head_tail
# Each run gets its own root under experiments/<name>/runs/; `imdb-lora exp run --help` has the options.
# Run every combination of the --grid values; stages whose settings agree are shared, done ones skipped.
exp *ARGS: build
    {{run}} {{bin}}/imdb-lora exp run --config {{config}} "$@"

# Compare an experiment's runs: a table (--format text|md|csv) and experiments/<name>/runs.{png,svg}.
exp-show *ARGS: build
    {{run}} {{bin}}/imdb-lora exp show "$@"

# For every stage: up to date, or what changed (a key old → new, an input, the code, an output); runs nothing.
status *ARGS: build
    {{run}} {{bin}}/imdb-lora status --config {{config}} "$@"

# The whole chain on a small slice of the real data, in its own artifacts folder.
smoke: build
    #!/usr/bin/env bash
    set -euo pipefail
    sets=(--set artifacts=artifacts-smoke --set data.max_train=200 --set data.max_validation=200
          --set data.max_test=400 --set training.epochs=1 --set training.checkpoint_every_steps=5)
    # Every stage in pipeline order, from the registry (`imdb-lora stages`: "<stage> <folder>" lines).
    stages=$("{{bin}}/imdb-lora" stages)
    while read -r stage _ <&3; do
        {{run}} "{{bin}}/imdb-lora" "$stage" --config {{config}} "${sets[@]}"
    done 3<<<"$stages"
    {{run}} "{{bin}}/imdb-lora" predict --config {{config}} "${sets[@]}" "A wonderful, moving film." "Dull and far too long."
    {{run}} "{{bin}}/imdb-lora" predict --config {{config}} "${sets[@]}" --model artifacts-smoke/export --json "A wonderful, moving film."

# Build the stages and imdb-lora with CUDA for Hopper GPUs → target/cuda/release (toolkit from PyPI wheels in .cuda/).
build-cuda:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo fetch --quiet
    cuda_home=$(scripts/cuda-toolkit.sh .cuda | sed -n 's/^CUDA_HOME=//p')
    export CUDA_HOME=$cuda_home PATH=$cuda_home/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    cargo build --release --features cuda -p train -p evaluate -p imdb-lora --target-dir target/cuda
    ls -la target/cuda/release/imdb-lora

# Clippy on the CUDA build (no GPU needed): the code behind `--features cuda` cannot rot between GPU runs.
lint-cuda:
    #!/usr/bin/env bash
    set -euo pipefail
    # The toolkit script reads cudarc's sources, which only the cuda feature's builds fetch.
    cargo fetch --quiet
    cuda_home=$(scripts/cuda-toolkit.sh .cuda | sed -n 's/^CUDA_HOME=//p')
    export CUDA_HOME=$cuda_home PATH=$cuda_home/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    cargo clippy --release --features cuda -p train -p evaluate -p imdb-lora --target-dir target/cuda --all-targets -- -D warnings

# The bundle to copy to a GPU machine (.gpu/bundle): imdb-lora (CUDA), MiniLM in bf16, the fixture, the real split's tokens.
gpu-bundle:
    cargo build --release -p imdb-lora
    {{run}} scripts/gpu-bundle.sh

# The GPU check's whole logic on this CPU, on a tiny slice (what scripts/gpu-check.sh runs on a GPU).
gpu-check-cpu:
    cargo build --release -p imdb-lora
    {{run}} scripts/gpu-bundle.sh --bin {{bin}}/imdb-lora --host-bin {{bin}}/imdb-lora --out .gpu/cpu-bundle --tiny
    scripts/gpu-check.sh --device cpu --bundle .gpu/cpu-bundle --out .gpu/cpu-check --quick

# scripts/run_tests.py: `cargo test`'s binaries, as many at a time as there are cores, then the
# counts and every skip. Options for cargo, then `--` and the test binaries' options:
# `just test -p training -- learning`. (No --workspace: at this virtual manifest cargo tests
# every member anyway, and --workspace would override -p.)
# Run the whole test suite (its binaries side by side) and list every skip.
test *ARGS:
    {{run}} scripts/run_tests.py --release "$@"

# The tests of `just test`'s runner, on a throwaway Cargo package (CI runs them first).
test-runner:
    python3 scripts/test_run_tests.py

# The same tests one binary after another, as plain `cargo test` runs them.
test-serial *ARGS:
    {{run}} cargo test --release "$@"

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings

# The tokenizer, then the model's training step and inference (MiniLM, CPU): ours in f32 (fused
# kernels and the composed reference ops), bf16 and int8; with a Python that has torch +
# transformers + peft (BENCH_PYTHON, else .venv-bench/bin/python; recipe in README, Performance),
# PyTorch + PEFT in f32 and bf16 autocast, and with onnxruntime + onnx also ONNX Runtime f32 and
# int8 dynamic quantization of the same merged model. BENCH_REPEATS rounds (default 2), appended
# to bench.jsonl (or $BENCH_FILE) with a line on the machine and its load; then every ratio of
# ours to a reference, best of the rounds (scripts/bench_ratios.py). Arguments go to both sides.

# Throughput of ours (f32, bf16, int8) and of every reference found, in one run → bench.jsonl, ratios.
bench *ARGS:
    cargo build --release --workspace --bin imdb-lora
    scripts/timed.sh "${BENCH_FILE:-bench.jsonl}" bench -- {{just_executable()}} bench-lines "${BENCH_FILE:-bench.jsonl}" "$@"

# (On synthetic parquet files of 2,000 and 200,000 short reviews, in a child process; JSON lines.)
# Batch predict's peak RSS and reviews/s beside evaluate's in-process reviews/s (docs/batch-predict.md).
bench-predict *ARGS:
    cargo build --release --workspace --bin imdb-lora
    {{run}} {{bin}}/imdb-lora bench --predict-files 2000,200000 "$@"

[private]
bench-lines out *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    out=$1; shift
    py=${BENCH_PYTHON:-.venv-bench/bin/python}
    [ -x "$py" ] || py=
    round=$(mktemp)
    {{run}} cargo bench --workspace --bench tokenize | tee -a "$round"
    if [ -n "$py" ]; then {{run}} "$py" scripts/tokenizer_bench.py | tee -a "$round" || true; fi
    for _ in $(seq "${BENCH_REPEATS:-2}"); do
        {{run}} {{bin}}/imdb-lora bench --dtype f32 "$@" | tee -a "$round"
        {{run}} {{bin}}/imdb-lora bench --dtype f32 --kernels composed "$@" | tee -a "$round"
        {{run}} {{bin}}/imdb-lora bench --dtype bf16 "$@" | tee -a "$round"
        {{run}} {{bin}}/imdb-lora bench --int8 "$@" | tee -a "$round"
        if [ -n "$py" ] && "$py" -c "import torch, transformers, peft" 2>/dev/null; then
            onnx=$("$py" -c "import onnxruntime, onnx" 2>/dev/null && echo --onnx || true)
            openvino=$("$py" -c "import openvino, nncf" 2>/dev/null && echo --openvino || true)
            {{run}} "$py" scripts/torch_bench.py --threads "$(nproc)" $onnx "$@" | tee -a "$round"
            {{run}} "$py" scripts/torch_bench.py --threads "$(nproc)" --dtype bf16 $openvino "$@" | tee -a "$round"
        fi
    done
    cat "$round" >> "$out"
    python3 scripts/bench_ratios.py < "$round"
    rm -f "$round"

# The README's results and performance tables (Markdown) from the artifacts and bench.jsonl.
results *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --workspace --bin imdb-lora
    bench=${BENCH_FILE:-bench.jsonl}
    if [ -f "$bench" ]; then set -- --bench "$bench" "$@"; fi
    {{run}} {{bin}}/imdb-lora results --config {{config}} "$@"
