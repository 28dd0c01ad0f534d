"""The PyTorch + PEFT reference for benches/throughput.rs: the same model, LoRA settings, batch
and timing, printed as the same JSON lines (plus the merged-weights inference).

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers peft
    /tmp/venv/bin/python crates/lora-classifier/benches/torch_reference.py
"""
import json, os, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

BATCH, SEQ, STEPS = 16, 128, int(os.environ.get("STEPS", 10))
torch.set_num_threads(2)
here = os.path.dirname(os.path.abspath(__file__))
# The HF cache as huggingface_hub finds it (HF_HUB_CACHE, HF_HOME, ~/.cache/huggingface), else
# ../shared/hf-home beside the project, as the Rust benchmark does.
shared = os.path.join(here, "../../../../shared/hf-home")
if not (os.environ.get("HF_HOME") or os.environ.get("HF_HUB_CACHE")) and os.path.isdir(shared):
    os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = shared, "1"
from huggingface_hub import snapshot_download  # noqa: E402 (reads the variables above)
path = snapshot_download("sentence-transformers/all-MiniLM-L6-v2")
base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["query", "value"])
model = get_peft_model(base, config)
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, base.config.vocab_size, (BATCH, SEQ), generator=g)
mask, labels = torch.ones_like(ids), torch.randint(0, 2, (BATCH,), generator=g)
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def bench(name, step):
    for _ in range(2):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(STEPS):
        step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"bench": name, "samples_per_s": round(STEPS * BATCH / wall, 2),
                      "cpu_s_per_step": round(cpu / STEPS, 3), "torch": torch.__version__}))


def train_step():
    opt.zero_grad()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    opt.step()


model.train()
bench("train_step", train_step)
model.eval()
with torch.inference_mode():
    bench("inference", lambda: model(input_ids=ids, attention_mask=mask))
    merged = model.merge_and_unload().eval()
    bench("inference_merged", lambda: merged(input_ids=ids, attention_mask=mask))
