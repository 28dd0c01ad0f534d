#!/usr/bin/env bash
# Makes the bundle that scripts/gpu-check.sh runs from, in one git-ignored folder to copy to a GPU
# machine, each part compressed with xz: bin/ (the imdb-lora executable, stripped), fixtures/ (the
# transformers + PEFT reference fixture), minilm/ (all-MiniLM-L6-v2 with bf16 weights) and
# artifacts.tar.xz (the data and token artifacts of the real split, made with that model folder,
# so the GPU machine runs train and evaluate on them as they are). The parity and throughput steps
# need only bin/ and fixtures/ (~17 MiB); the real run needs bin/, minilm/, artifacts.tar.xz and
# sets.txt (~63 MiB): copy them in one go or in two, as the copy allows.
#
#   scripts/gpu-bundle.sh [--bin PATH] [--host-bin PATH] [--out DIR] [--tiny]
#
#   --bin PATH       the executable to pack (default target/cuda/release/imdb-lora: `just build-cuda`)
#   --host-bin PATH  an imdb-lora that runs here, for data-prep/tokenize/convert
#                    (default target/release/imdb-lora: `cargo build --release -p imdb-lora`)
#   --out DIR        the bundle folder, replaced (default .gpu/bundle); run gpu-check.sh from the
#                    repository root with the same DIR: the artifacts' stamps record the model folder
#                    by this relative path
#   --tiny           a 64/64/128-review slice of the data, for the CPU dry run (`just gpu-check-cpu`)
#
# The data come from the Hugging Face cache ($HF_HOME; ../shared/hf-home beside the repository when
# HF_HOME is unset), the fixture from $FIXTURES (default: the repository's fixtures/).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/cuda/release/imdb-lora host=target/release/imdb-lora out=.gpu/bundle tiny=0
while [ $# -gt 0 ]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --host-bin) host=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --tiny) tiny=1; shift ;;
        *) echo "gpu-bundle.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] || { echo "gpu-bundle.sh: no executable at $bin: run 'just build-cuda' or give --bin" >&2; exit 1; }
[ -x "$host" ] || { echo "gpu-bundle.sh: no executable at $host: run 'cargo build --release -p imdb-lora' or give --host-bin" >&2; exit 1; }
if [ -z "${HF_HOME:-}" ] && [ -d ../shared/hf-home ]; then
    export HF_HOME=$PWD/../shared/hf-home HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
fi
fixture=${FIXTURES:-fixtures}/bert-tiny-lora
[ -d "$fixture" ] || { echo "gpu-bundle.sh: no reference fixture at $fixture (set FIXTURES)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/bin" "$out/fixtures"
strip -o "$out/bin/imdb-lora" "$bin"
xz -T0 -9 "$out/bin/imdb-lora"
"$host" convert sentence-transformers/all-MiniLM-L6-v2 "$out/minilm" --dtype bf16
cp -r "$fixture" "$out/fixtures/"
chmod -R u+w "$out/fixtures"
sets=(--set "artifacts=$out/artifacts" --set "model.source=$out/minilm")
if [ "$tiny" = 1 ]; then
    sets+=(--set data.max_train=64 --set data.max_validation=64 --set data.max_test=128)
fi
"$host" data-prep "${sets[@]}"
"$host" tokenize "${sets[@]}"
# The overrides gpu-check.sh applies too, one argument per line.
printf '%s\n' "${sets[@]}" >"$out/sets.txt"
# Compressed for the copy (gpu-check.sh unpacks them): the weights, and the artifacts as one file.
# The fixture's tokenizer files are not needed there (check-fixture reads its token ids).
rm -f "$out"/fixtures/*/base/{tokenizer.json,vocab.txt}
xz -T0 -6 "$out/minilm/model.safetensors" "$out"/fixtures/*/base/model.safetensors
tar -C "$out" -cf - artifacts | xz -T0 -6 >"$out/artifacts.tar.xz"
rm -rf "$out/artifacts"
size=$(du -sm "$out" | cut -f1)
echo "gpu-bundle.sh: $out is ${size} MiB"
du -sh "$out"/* | sed 's/^/  /'
