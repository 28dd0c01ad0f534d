"""Reads the JSON lines of `imdb-lora bench` and scripts/torch_bench.py (one run, on one
machine) and prints each of our figures as a ratio against each reference of the same dtype:
PyTorch + PEFT f32 and bf16 autocast, PyTorch inference with the merged model's weights in bf16,
ONNX Runtime f32 and int8 dynamic quantization, OpenVINO at its default precision (the line says
which it picked) and NNCF int8; `*` marks the best anchor of each dtype. Repeated lines keep their
best (the machine is shared: the least CPU time per step, the most samples per second). Then the
kernels each side ran: ours' `runs_on`, the anchors' `kernel` (oneDNN's verbose primitives for
PyTorch, the runtime model's primitive types for OpenVINO, the optimized graph's operators for
ONNX Runtime).
Standard library only; `just bench` pipes into it.

    python3 scripts/bench_ratios.py < bench.jsonl
"""
import json
import sys

best = {}
for raw in sys.stdin:
    raw = raw.strip()
    if not raw.startswith("{"):
        continue
    line = json.loads(raw)
    if "samples_per_s" not in line:
        continue
    key = (line["bench"], line.get("impl", "ours"), line["dtype"], line["model"], line["batch"], line["seq"])
    b = best.setdefault(key, {"samples_per_s": 0.0, "cpu_s_per_step": float("inf"), "n": 0})
    if line["samples_per_s"] > b["samples_per_s"]:
        # The kernel of the fastest line (ours in f32 has fused and composed lines).
        b["kernel"] = line.get("runs_on") or line.get("kernel") or "not recorded"
    b["samples_per_s"] = max(b["samples_per_s"], line["samples_per_s"])
    b["cpu_s_per_step"] = min(b["cpu_s_per_step"], line.get("cpu_s_per_step", float("inf")))
    b["n"] += 1

ours = sorted(k for k in best if k[1] == "ours")
refs = sorted(k for k in best if k[1] != "ours")
print("\nratios (ours ÷ reference of the same dtype; best of the repeats; > 1 means ours is faster;")
print("* marks the best anchor of that dtype, the one a goal compares with)")
print(f"{'bench':<11} {'ours':<5} {'reference':<27} {'samples/s':>20} {'ratio':>6} {'CPU s/step':>14} {'ratio':>6}")
for o in ours:
    same = [r for r in refs if (o[0], o[2], o[3:]) == (r[0], r[2], r[3:])]
    top = max(same, key=lambda r: best[r]["samples_per_s"], default=None)
    for r in same:
        a, b = best[o], best[r]
        wall = a["samples_per_s"] / b["samples_per_s"]
        cpu = b["cpu_s_per_step"] / a["cpu_s_per_step"]
        mark = "*" if r == top and len(same) > 1 else " "
        print(f"{o[0]:<11} {o[2]:<5} {mark}{r[1] + ' ' + r[2]:<26} {a['samples_per_s']:>9.1f} vs {b['samples_per_s']:>6.1f}"
              f" {wall:>5.2f}× {a['cpu_s_per_step']:>6.3f} vs {b['cpu_s_per_step']:>5.3f} {cpu:>5.2f}×")

print("\nkernels (what each side's matrix products ran)")
for k in ours + refs:
    print(f"{k[0]:<11} {k[1] + ' ' + k[2]:<27} {best[k]['kernel']}")
