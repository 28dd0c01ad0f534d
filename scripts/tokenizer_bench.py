"""The Python reference for the tokenizer benchmark (`cargo bench -p tokenize --bench tokenize`):
Hugging Face's `tokenizers` (the Rust library behind transformers' fast tokenizers) through its
Python binding, `encode_batch` with padding and truncation to 128 on the same 20,000 IMDb test
reviews, median of 3 runs after a warm-up, printed as the same JSON line.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install tokenizers pyarrow
    /tmp/venv/bin/python scripts/tokenizer_bench.py

The model and data are found in the HF cache: $HF_HOME, else ../shared/hf-home beside the
repository (as `just` does).
"""
import glob, json, os, time

import pyarrow.parquet as pq
import tokenizers

REVIEWS, MAX_LEN, RUNS = 20_000, 128, 3

here = os.path.dirname(os.path.abspath(__file__))
hub = os.path.join(os.environ.get("HF_HOME") or os.path.join(here, "../../shared/hf-home"), "hub")


def cached(pattern):
    found = sorted(glob.glob(os.path.join(hub, pattern)))
    if not found:
        raise SystemExit(f"not in the HF cache {hub}: {pattern}")
    return found[-1]


texts = pq.read_table(cached("datasets--stanfordnlp--imdb/snapshots/*/plain_text/test-00000-of-00001.parquet"),
                      columns=["text"]).column("text").to_pylist()[:REVIEWS]
tok = tokenizers.Tokenizer.from_file(cached("models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*/tokenizer.json"))
tok.enable_truncation(MAX_LEN)
tok.enable_padding(length=MAX_LEN, pad_id=0, pad_token="[PAD]")
tok.encode_batch(texts[:1000])
seconds = []
for _ in range(RUNS):
    start = time.perf_counter()
    tok.encode_batch(texts)
    seconds.append(time.perf_counter() - start)
seconds = sorted(seconds)[RUNS // 2]
print(json.dumps({"bench": "tokenize", "impl": f"tokenizers {tokenizers.__version__} (Python)",
                  "reviews": len(texts), "max_len": MAX_LEN, "seconds": round(seconds, 3),
                  "reviews_per_s": round(len(texts) / seconds)}), flush=True)
