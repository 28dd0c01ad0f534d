#!/usr/bin/env bash
# GPU check, run ON the GPU machine from carried binaries and artifacts (see
# README "GPU"). Prints the device, fixture parity on the GPU (f32 and bf16),
# one bf16 training epoch of the real 2,500-review split, evaluation of the
# 20,000-review test split, and the same training step in PyTorch + PEFT.
#
# Expects, relative to the repository root (carry them with the device tool):
#   .gpu/bin/{train,evaluate,predict}.xz   built here with `just build-cuda`
#   .gpu/minilm/                        config.json, tokenizer.json, model.safetensors
#   .gpu/fixtures/bert-tiny-lora/       base/, adapter/, expected.json, expected.safetensors
#   artifacts/{data,tokens}/            from `just data-prep tokenize`
set -uo pipefail
out=${OUT:-/tmp/gpu-check}; mkdir -p "$out"
py=/opt/torch/.venv/bin/python3
libs=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)
export LD_LIBRARY_PATH=${libs}:${LD_LIBRARY_PATH:-}
for f in .gpu/bin/*.xz; do [ -e "$f" ] && xz -d -f "$f"; done
chmod +x .gpu/bin/* 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"

echo "== parity: fixture adapter on the GPU vs PEFT's logits"
fx=.gpu/fixtures/bert-tiny-lora
for dtype in f32 bf16; do
    $py - "$fx" <<'PY' >"$out/texts.txt"
import json, sys
print("\n".join(json.load(open(f"{sys.argv[1]}/expected.json"))["texts"]))
PY
    .gpu/bin/predict --json --model "$fx/base" --adapter "$fx/adapter" \
        --set model.source="$fx/base" --set model.max_len=24 --set training.device=cuda \
        --set training.dtype=$dtype --file "$out/texts.txt" >"$out/parity-$dtype.jsonl"
    $py - "$fx" "$out/parity-$dtype.jsonl" "$dtype" <<'PY'
import json, sys, torch
from safetensors.torch import load_file
exp = torch.softmax(load_file(f"{sys.argv[1]}/expected.safetensors")["lora_logits"].double(), -1)[:, 1]
got = torch.tensor([json.loads(l)["prob_positive"] for l in open(sys.argv[2])], dtype=torch.float64)
err = (exp - got).abs().max().item()
tol = 1e-5 if sys.argv[3] == "f32" else 2e-2
print(json.dumps({"parity": sys.argv[3], "max_abs_err_prob": err, "ok": err <= tol}))
PY
done

echo "== one bf16 epoch of the real split, then the test split"
sets=(--set model.source=.gpu/minilm --set training.device=cuda --set training.dtype=bf16
      --set training.epochs=1 --set evaluate.batch_size=256)
.gpu/bin/train "${sets[@]}" --force 2>&1 | tee "$out/train.log" | grep -v "^epoch"
.gpu/bin/evaluate "${sets[@]}" --force 2>&1 | tee "$out/evaluate.log" | tail -3

echo "== PyTorch + PEFT, same model, batch 16 x 128, bf16 autocast"
$py - .gpu/minilm <<'PY' | tee "$out/torch.jsonl"
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification
base = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=2).cuda()
model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=32, lora_dropout=0.1,
                                        target_modules=["query", "value"]))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
ids = torch.randint(1000, 30000, (16, 128), device="cuda"); labels = torch.randint(0, 2, (16,), device="cuda")
def step():
    opt.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward(); opt.step()
for _ in range(5): step()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(50): step()
torch.cuda.synchronize()
print(json.dumps({"bench": "torch_train_step", "samples_per_s": round(50 * 16 / (time.perf_counter() - t), 1)}))
PY
grep -h "samples/s\|reviews/s" "$out/train.log" "$out/evaluate.log" | tail -3
