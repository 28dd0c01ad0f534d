"""The PyTorch + PEFT reference for `imdb-lora bench`: the same model, LoRA settings (r 8,
alpha 32, dropout 0.1 on query and value), batch, optimizer (AdamW) and timing, printed as the
same JSON lines, on the CPU or a GPU.

    python3 -m venv .venv-bench && .venv-bench/bin/pip install torch transformers peft onnxruntime onnx onnxscript openvino nncf
    .venv-bench/bin/python scripts/torch_bench.py                    # MiniLM, CPU, f32
    .venv-bench/bin/python scripts/torch_bench.py --onnx             # + ONNX Runtime f32 and int8
    python3 scripts/torch_bench.py --device cuda --dtype bf16 --model bert-base --batch 32

--onnx (CPU): after PyTorch's benchmarks, exports the same merged model (f32) with
torch.onnx.export and times ONNX Runtime's inference on it, then on its int8 dynamic
quantization (onnxruntime.quantization.quantize_dynamic, QInt8 weights), with the same threads.

--openvino (CPU): OpenVINO's inference on the same merged model at its default precision (bf16
on CPUs with AMX or AVX512-BF16 kernels; the line names it) and after NNCF int8 quantization.

--model: minilm (all-MiniLM-L6-v2 from the HF cache: $HF_HOME, else ../shared/hf-home beside the
repository), minilm-shape / bert-base / bert-large (randomly initialised, as `imdb-lora bench` does: the time
does not depend on the weights), or a checkpoint folder. --dtype bf16 runs under
torch.autocast (f32 master weights, bf16 matmuls), PyTorch's usual mixed precision, and
inference a second time with the merged model cast to bf16 (`model.to(torch.bfloat16)`, impl
`pytorch-bf16-weights`): PyTorch's fastest bf16 inference, the anchor a user would pick.
"""
import argparse, collections, copy, glob, json, os, sys, tempfile, time

# Idle threads sleep instead of spinning (OpenMP here, ONNX Runtime's pool below): on a shared
# machine spinning counts as CPU time, and CPU seconds per step is the figure compared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

SHAPES = {"minilm-shape": (384, 6, 12, 1536), "bert-base": (768, 12, 12, 3072),
          "bert-large": (1024, 24, 16, 4096)}

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="minilm")
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
p.add_argument("--batch", type=int, default=16)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
p.add_argument("--onnx", action="store_true", help="also ONNX Runtime f32 and int8 (CPU)")
p.add_argument("--openvino", action="store_true",
               help="also OpenVINO at its default precision and NNCF int8 (CPU; needs openvino, nncf)")
p.add_argument("--only", choices=["train_step", "inference"], help="run only this benchmark")
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
dev = torch.device(args.device)


def load_base():
    if args.model in SHAPES:
        h, layers, heads, inter = SHAPES[args.model]
        cfg = BertConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=inter, num_labels=2)
        torch.manual_seed(0)
        return BertForSequenceClassification(cfg), f"{args.model} (random weights)"
    path = args.model
    if args.model == "minilm":
        here = os.path.dirname(os.path.abspath(__file__))
        hf_home = os.environ.get("HF_HOME", os.path.join(here, "../../shared/hf-home"))
        path = glob.glob(f"{hf_home}/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*")[0]
    # f32 master weights (a bf16 checkpoint too), as mixed-precision training keeps them.
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).float(), args.model


base, name = load_base()
model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=32, lora_dropout=0.1,
                                        target_modules=["query", "value"])).to(dev)
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, base.config.vocab_size, (args.batch, args.seq), generator=g).to(dev)
mask, labels = torch.ones_like(ids), torch.randint(0, 2, (args.batch,), generator=g).to(dev)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.01)
autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def onednn_kernels(step):
    """The oneDNN primitives one call of `step` ran, most frequent first, as
    'kind:implementation ×count' (oneDNN's verbose lines, which it writes to the process's
    stdout, caught at the file descriptor), or what ran instead when none did: PyTorch's f32
    GEMMs go to its BLAS, not oneDNN."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as out:
        os.dup2(out.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                step()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        lines = out.read().splitlines()
    counts = collections.Counter()
    for fields in (line.split(",") for line in lines if line.startswith("onednn_verbose")):
        if "exec" in fields and len(fields) > fields.index("exec") + 3:
            i = fields.index("exec")  # exec, engine, primitive kind, implementation
            counts[f"{fields[i + 2]}:{fields[i + 3]}"] += 1
    named = ", ".join(f"{k} ×{n}" for k, n in counts.most_common(3))
    if any(k.split(":")[0] in ("matmul", "inner_product") for k in counts):
        return named
    blas = "MKL" if torch.backends.mkl.is_available() else "its BLAS"
    return f"GEMMs through {blas}, not oneDNN" + (f"; oneDNN: {named}" if named else "")


def bench(bench_name, step, impl="pytorch+peft", dtype=None, version=("torch", torch.__version__), extra=None):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    line = {"bench": bench_name, "impl": impl, "model": name, "device": args.device,
            "dtype": dtype or args.dtype, "batch": args.batch, "seq": args.seq, "steps": args.steps,
            "samples_per_s": round(args.steps * args.batch / wall, 2),
            "ms_per_step": round(1e3 * wall / args.steps, 3), version[0]: version[1]}
    if dev.type == "cpu":
        line["cpu_s_per_step"] = round(cpu / args.steps, 3)
        line["threads"] = torch.get_num_threads()
        if impl.startswith("pytorch"):
            # What computed it: one more step with oneDNN's verbose output on.
            line["kernel"] = onednn_kernels(step)
    else:
        # PyTorch's allocator's own peaks (tensors; and what its cache held), this benchmark only.
        line["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        line["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    line.update(extra or {})
    print(json.dumps(line), flush=True)


def train_step():
    opt.zero_grad()
    with autocast:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    opt.step()
    loss.item()  # as the train stage reads the loss of every step


def onnx_benchmarks(merged):
    """ONNX Runtime on the merged model exported in f32, and on its int8 dynamic quantization."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tempfile.mkdtemp(prefix="onnx-bench-")
    f32_path, int8_path = f"{folder}/model.onnx", f"{folder}/model-int8.onnx"
    merged = merged.float().eval()
    with torch.no_grad():
        torch.onnx.export(merged, (ids.cpu(), mask.cpu()), f32_path, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "b", 1: "n"}, "attention_mask": {0: "b", 1: "n"}})
    quantize_dynamic(f32_path, int8_path, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    feeds = {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()}
    with torch.no_grad():
        want = merged(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()
    for dtype, path in [("f32", f32_path), ("int8", int8_path)]:
        # The graph as ONNX Runtime optimized it, to name the operators its kernels ran.
        options.optimized_model_filepath = f"{path}.optimized.onnx"
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
                                  if "MatMul" in n.op_type or "Gemm" in n.op_type or "Attention" in n.op_type)
        kernel = "CPUExecutionProvider (MLAS): " + ", ".join(f"{k} ×{n}" for k, n in ops.most_common(3))
        # The exported model computes what PyTorch computes (int8: up to quantization).
        diff = float(abs(session.run(None, feeds)[0] - want).max())
        if dtype == "f32" and diff > 1e-3:
            raise SystemExit(f"ONNX Runtime f32 logits differ from PyTorch's by {diff}")
        bench("inference", lambda: session.run(None, feeds), impl="onnxruntime", dtype=dtype,
              version=("onnxruntime", ort.__version__),
              extra={"max_abs_diff_vs_torch_f32": round(diff, 5), "kernel": kernel})


def openvino_kernels(compiled):
    """The kernels of the compiled model's matrix products, most frequent first, as
    'layer type:primitive ×count' (the runtime model's `layerType` and `primitiveType`)."""
    counts = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = str(info["layerType"].astype(str)) if "layerType" in info else op.get_type_name()
        if layer in ("FullyConnected", "MatMul", "Convolution"):
            primitive = str(info["primitiveType"].astype(str)) if "primitiveType" in info else "?"
            counts[f"{layer}:{primitive}"] += 1
    return ", ".join(f"{k} ×{n}" for k, n in counts.most_common(3)) or "no matrix product found"


def openvino_benchmarks(merged):
    """OpenVINO on the merged model (f32 weights in): its default precision (it picks bf16 where
    the CPU has AMX or AVX512-BF16 kernels; the line says which, from the compiled model's
    INFERENCE_PRECISION_HINT), then NNCF post-training int8 quantization of the same model,
    calibrated on the benchmark batch. Each line carries max |logits − PyTorch f32|."""
    import nncf
    import openvino as ov

    merged = merged.float().eval()
    example = {"input_ids": ids.cpu(), "attention_mask": mask.cpu()}
    with torch.no_grad():
        want = merged(**example).logits.float().numpy()
        f32_model = ov.convert_model(merged, example_input=example)
    int8_model = nncf.quantize(f32_model, nncf.Dataset([{k: v.numpy() for k, v in example.items()}]),
                               subset_size=1)
    core = ov.Core()
    feeds = {k: v.numpy() for k, v in example.items()}
    for dtype, m in [("default", f32_model), ("int8", int8_model)]:
        compiled = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
        precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        precision = {"<Type: 'bfloat16'>": "bf16", "<Type: 'float32'>": "f32"}.get(precision, precision)
        request = compiled.create_infer_request()
        diff = float(abs(request.infer(feeds)[0] - want).max())
        bench("inference", lambda: request.infer(feeds), impl="openvino",
              dtype=precision if dtype == "default" else "int8",
              version=("openvino", ov.__version__),
              extra={"precision_hint": precision, "max_abs_diff_vs_torch_f32": round(diff, 5),
                     "kernel": openvino_kernels(compiled),
                     **({"nncf": nncf.__version__} if dtype == "int8" else {})})


if args.only in (None, "train_step"):
    model.train()
    bench("train_step", train_step)
model.eval()
with torch.inference_mode(), autocast:
    merged = model.merge_and_unload().eval()
    if args.only in (None, "inference"):
        bench("inference", lambda: merged(input_ids=ids, attention_mask=mask).logits.float().cpu())
if args.dtype == "bf16" and args.only in (None, "inference"):
    # The other bf16 anchor a user would pick: the whole merged model cast to bf16 (weights and
    # activations in bf16, no autocast), PyTorch's fastest bf16 inference on CPUs whose oneDNN
    # has AMX or AVX512-BF16 kernels.
    with torch.inference_mode():
        bf16_model = copy.deepcopy(merged).to(torch.bfloat16)  # merged stays f32 for ONNX
        bench("inference", lambda: bf16_model(input_ids=ids, attention_mask=mask).logits.float().cpu(),
              impl="pytorch-bf16-weights", dtype="bf16")
if args.onnx:
    onnx_benchmarks(merged)
if args.openvino and args.only in (None, "inference"):
    openvino_benchmarks(merged)
