#!/usr/bin/env python3
"""Checks a merged export (artifacts/export, `just export`) against plain Hugging Face transformers.

1. `AutoModelForSequenceClassification.from_pretrained(EXPORT)` loads every weight: no missing
   and no unexpected tensor (a missing head would be initialised at random, silently).
2. `pipeline("text-classification", model=EXPORT)` gives, for each text, the probabilities our
   `predict --model EXPORT --json` prints, and the same `label` and `score`.
3. With --adapter (and --base), also our pipeline's own path: `predict --model BASE --adapter
   ADAPTER` (the in-memory merge the evaluate stage uses) gives the same probabilities.

Prints one JSON object and exits 1 when a difference exceeds --tol. Needs torch and transformers
(no PEFT); run it in a venv that has them, e.g.:

    python scripts/check_export.py --export artifacts/export --predict target/release/predict \
        --config pipeline.yaml
"""

import argparse
import json
import subprocess
import sys

TEXTS = [
    "A wonderful, moving film with a superb cast.",
    "Dull plot, wooden acting; I walked out halfway.",
    "Not bad at all.",
    "I expected more from this director, but the last act almost saves it.",
    # Longer than 128 tokens: truncation must cut it where the pipeline does.
    " ".join(
        ["The pacing drags, the jokes land flat, and the lead seems bored in every scene."] * 12
        + ["Still, the final scene is genuinely beautiful and I loved the score."]
    ),
]


def predict(args, extra):
    cmd = [args.predict]
    if args.config:
        cmd += ["--config", args.config]
    for s in args.set:
        cmd += ["--set", s]
    cmd += extra + ["--json"] + TEXTS
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd[:-len(TEXTS)])} … failed:\n{run.stderr}")
    return [json.loads(line) for line in run.stdout.splitlines()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="the export folder")
    p.add_argument("--predict", required=True, help="our predict binary (or a wrapper script)")
    p.add_argument("--config", help="pipeline.yaml for predict")
    p.add_argument("--set", action="append", default=[], help="--set passed to predict")
    p.add_argument("--base", help="the base model folder, for the check through the adapter")
    p.add_argument("--adapter", help="the PEFT adapter folder the export was made from")
    p.add_argument("--tol", type=float, default=1e-5, help="largest probability difference")
    args = p.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    torch.manual_seed(0)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        args.export, output_loading_info=True, dtype=torch.float32
    )
    loading = {k: sorted(v) for k, v in info.items() if v}
    tokenizer = AutoTokenizer.from_pretrained(args.export)
    clf = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    # truncation=True cuts at the tokenizer's model_max_length, which the export sets to the
    # length the model was trained with (model.max_len).
    hf = clf(TEXTS, top_k=None, truncation=True)
    hf_top = clf(TEXTS, truncation=True)

    ours = predict(args, ["--model", args.export])
    rows, worst = [], 0.0
    for text, scores, top, line in zip(TEXTS, hf, hf_top, ours):
        by_label = {s["label"]: s["score"] for s in scores}
        diff = abs(by_label["positive"] - line["prob_positive"])
        worst = max(worst, diff, abs(top["score"] - line["score"]))
        rows.append(
            {
                "text": text[:40],
                "hf_positive": by_label["positive"],
                "ours_positive": line["prob_positive"],
                "hf_label": top["label"],
                "ours_label": line["label"],
                "abs_diff": diff,
            }
        )
    labels_agree = all(r["hf_label"] == r["ours_label"] for r in rows)

    via_adapter = None
    if args.adapter:
        base = predict(args, (["--model", args.base] if args.base else []) + ["--adapter", args.adapter])
        via_adapter = max(abs(a["prob_positive"] - b["prob_positive"]) for a, b in zip(base, ours))
        worst = max(worst, via_adapter)

    ok = not loading and labels_agree and worst <= args.tol
    print(
        json.dumps(
            {
                "check": "export vs transformers pipeline",
                "export": args.export,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "architectures": model.config.architectures,
                "id2label": model.config.id2label,
                "loading_problems": loading,
                "rows": rows,
                "max_abs_diff_vs_hf": max(r["abs_diff"] for r in rows),
                "max_abs_diff_export_vs_adapter": via_adapter,
                "labels_agree": labels_agree,
                "tol": args.tol,
                "ok": ok,
            },
            indent=1,
        )
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
