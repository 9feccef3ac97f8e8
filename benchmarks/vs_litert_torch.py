"""Our causal-LM .tflite files against litert-torch's, same weights, same runtime.

litert-torch (Google's converter for on-device LLMs, formerly ai-edge-torch)
builds Falcon-RW from its `generative/examples/falcon` config. Both projects'
files are made at the generation benchmark's shape (6 layers, hidden 512, 8
heads, intermediate 2048, vocabulary 8192), prefill 32, caches 256 and 1024:
ours with `export_tflite_causal_lm` (fp32 and int8), theirs with its
`convert_to_tflite` (`none` and `dynamic_int8`), from one checkpoint holding
our weights in Hugging Face's Falcon-RW names. litert-torch runs in its own
virtual environment (`--litert-torch-python`), as a subprocess: it needs
tensorflow and torch beside it.

Every file runs in ai-edge-litert's `CompiledModel` on the CPU (XNNPACK, 2
threads, in-memory weight cache), the caches bound as one buffer for a
signature's input and output, as LiteRT-LM binds them. Timed, interleaved
round by round, median of `--runs`, in three regimes: cold (the processor's
caches evicted before each call, so the weights come from memory, as on a
phone, whose caches are a few MB against these files' 24-97 MB), interleaved
(each call after a call on another file: on a machine whose last-level cache
holds several files, some of a file's weights may still be there) and warm
(each call right after the same call, as a decode loop runs):
  prefill  32 prompt tokens from slot 0 (ours: the prefill signature our host
           loop takes there, windowed_prefill_32_<W> when the file has one;
           `prefill_32` over the whole cache also printed)
  decode   one token at position 40 (ours: the decode signature our host loop
           takes there, decode_<W> when the file has one; `decode` over the
           whole cache also printed)
Resident memory: each file loaded, then one prefill and one decode run, in a
fresh process (VmRSS). Before timing, every file's 8 greedy tokens after the
prompt are compared with Keras's, and the first decode logits of ours with
theirs (same weights: cosine 1 in fp32).

    python benchmarks/vs_litert_torch.py --litert-torch-python /work/venv-litert-torch/bin/python

Setting up that environment (CPU torch from the local wheel store):
    python -m venv /work/venv-litert-torch
    /work/venv-litert-torch/bin/pip install torch==2.13.0
    /work/venv-litert-torch/bin/pip install litert-torch==0.10.0 tensorflow==2.21.0 \\
        ai-edge-litert==2.3.0
"""

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from _bench import SHAPE, benchmark_backbone  # noqa: E402

PROMPT, POSITION, THREADS = 32, 40, 2
CACHES = (256, 1024)
VARIANTS = {"fp32": "none", "int8": "dynamic_int8"}  # ours: theirs

# Run in litert-torch's environment: builds its Falcon at our shape from the
# checkpoint and converts it. Arguments: one JSON object.
BUILD_THEIRS = textwrap.dedent("""
    import json, sys
    from litert_torch.generative.examples.falcon import falcon
    from litert_torch.generative.utilities import converter, export_config, model_builder
    args = json.loads(sys.argv[1])
    config = falcon.get_model_config()
    block = config.block_configs[0]
    block.attn_config.num_heads = block.attn_config.num_query_groups = args["num_heads"]
    block.attn_config.head_dim = args["head_dim"]
    block.ff_config.intermediate_size = args["intermediate_dim"]
    config.num_layers = args["num_layers"]
    config.block_configs = [block] * args["num_layers"]
    config.vocab_size = args["vocabulary_size"]
    config.embedding_dim = args["hidden_dim"]
    config.max_seq_len = args["cache"]
    # Every weight, LayerNorms included, comes from the checkpoint.
    model = model_builder.build_decoder_only_model(args["checkpoint"], config,
                                                   falcon.TENSOR_NAMES, model_class=falcon.Falcon,
                                                   mask_cache_size=args["cache"])
    for quantize, name in args["files"].items():
        converter.convert_to_tflite(model, output_path=args["out"], output_name_prefix=name,
                                    prefill_seq_len=args["prefill"],
                                    kv_cache_max_len=args["cache"], quantize=quantize,
                                    export_config=export_config.ExportConfig())
""")

# Run in a fresh process per file: resident memory after load and after one
# prefill and one decode. Arguments: path, JSON runner spec.
MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from _litert_runner import Runner, rss_mb
    before = rss_mb()
    runner = Runner(sys.argv[1], json.loads(sys.argv[2]))
    loaded = rss_mb()
    runner.prefill(); runner.decode()
    print(json.dumps({"before": before, "loaded": loaded, "ran": rss_mb()}))
""")


def write_checkpoint(backbone, path):
    """Our weights as a Hugging Face Falcon-RW checkpoint (safetensors), the
    tied LM head written out as `lm_head.weight`, as litert-torch's loader reads."""
    from forward import to_transformers
    from safetensors.numpy import save_file

    hf = to_transformers(backbone, SHAPE)
    state = {f"transformer.{k}": v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["transformer.word_embeddings.weight"].copy()
    os.makedirs(path, exist_ok=True)
    save_file(state, os.path.join(path, "model.safetensors"))


class Evictor:
    """Called, leaves none of the files' bytes in the processor's caches: it
    writes a buffer of twice the last-level cache (at least 1 GiB)."""

    def __init__(self):
        self.cache_bytes = last_level_cache_bytes()
        self.buffer = np.zeros(max(2 * self.cache_bytes, 2**30) // 8, np.float64)

    def __call__(self):
        self.buffer += 1.0


def last_level_cache_bytes():
    """The largest CPU cache's size from sysfs (0 where unreadable)."""
    sizes = [0]
    root = "/sys/devices/system/cpu/cpu0/cache"
    for index in os.listdir(root) if os.path.isdir(root) else ():
        try:
            with open(os.path.join(root, index, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale if text.rstrip("KMG").isdigit() else 0)
    return max(sizes)


def build_theirs(python, checkpoint, out, cache):
    files = {q: f"theirs_{v}_c{cache}" for v, q in VARIANTS.items()}
    args = {"checkpoint": checkpoint, "out": out, "cache": cache, "prefill": PROMPT,
            "files": files, "num_heads": SHAPE["num_attention_heads"],
            "head_dim": SHAPE["hidden_dim"] // SHAPE["num_attention_heads"],
            "intermediate_dim": SHAPE["intermediate_dim"], "num_layers": SHAPE["num_layers"],
            "vocabulary_size": SHAPE["vocabulary_size"], "hidden_dim": SHAPE["hidden_dim"]}
    proc = subprocess.run([python, "-c", BUILD_THEIRS, json.dumps(args)], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items()
                                          if k != "PYTHONPATH"})
    if proc.returncode:
        raise RuntimeError(f"litert-torch's conversion failed:\n{proc.stderr[-3000:]}")
    found = {}
    for variant, quantize in VARIANTS.items():
        names = [f for f in os.listdir(out) if f.startswith(files[quantize] + "_")
                 or f.startswith(files[quantize] + ".")]
        if len(names) != 1:
            raise RuntimeError(f"Expected one file for {files[quantize]} in {out}; found {names}.")
        found[variant] = os.path.join(out, names[0])
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litert-torch-python", required=True,
                        help="python of a virtual environment with litert-torch")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    if not os.path.isfile(args.litert_torch_python):
        parser.error(f"--litert-torch-python {args.litert_torch_python} does not exist")

    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf import FalconCausalLM
    from _litert_runner import Runner

    backbone, _ = benchmark_backbone()
    tmp = tempfile.mkdtemp(prefix="falcon-tf-bench-litert-torch-")
    atexit.register(shutil.rmtree, tmp, True)  # the files go when the run ends, however
    checkpoint = os.path.join(tmp, "checkpoint")
    write_checkpoint(backbone, checkpoint)
    prompt = np.random.default_rng(1).integers(0, SHAPE["vocabulary_size"], PROMPT).tolist()
    files = {}
    for cache in CACHES:
        start = time.perf_counter()
        entries = export_tflite_causal_lm("bench", os.path.join(tmp, f"ours_c{cache}"),
                                          model=backbone, variants=tuple(VARIANTS),
                                          cache_length=cache, prefill_lengths=(PROMPT,))
        ours_s = time.perf_counter() - start
        for variant, entry in entries.items():
            files[("ours", variant, cache)] = os.path.join(tmp, f"ours_c{cache}", "bench",
                                                           entry["file"])
        start = time.perf_counter()
        for variant, path in build_theirs(args.litert_torch_python, checkpoint,
                                          os.path.join(tmp, "theirs"), cache).items():
            files[("theirs", variant, cache)] = path
        print(f"cache {cache}: ours exported in {ours_s:.0f} s, theirs in "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    lm = FalconCausalLM(backbone, cache_length=max(CACHES))
    expected = lm.generate([prompt], max_length=PROMPT + 8, stop_token_ids=None)[0][PROMPT:]
    runners = {key: Runner(path, {"prompt": prompt, "position": POSITION,
                                  "threads": THREADS}) for key, path in files.items()}
    print("greedy tokens after the prompt against Keras's, and the cosine of the first "
          "decode logits, ours against theirs:")
    for key, runner in runners.items():
        got = runner.greedy(8)
        same = sum(a == b for a, b in zip(got, expected))
        line = f"  {'/'.join(map(str, key)):22s} {same}/8 tokens equal Keras's"
        if key[0] == "theirs":
            a, b = runners[("ours",) + key[1:]].first_logits, runner.first_logits
            cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            line += f"; logit cosine ours/theirs {cosine:.6f}"
        print(line)

    timings = {}
    for key, runner in runners.items():
        timings[key + ("prefill",)] = runner.prefill
        timings[key + ("decode",)] = runner.decode
        if key[0] == "ours" and runner.prefill_signature != runner.whole_prefill:
            timings[key + ("prefill over the whole cache",)] = runner.prefill_full
        if key[0] == "ours" and runner.window_signature:
            timings[key + ("decode over the whole cache",)] = runner.decode_full
    for fn in timings.values():
        for _ in range(args.warmup):
            fn()
    # Each round runs every prefill, then every decode, then ours over the whole
    # cache, so each call follows another file's.
    whats = ("prefill", "decode", "prefill over the whole cache", "decode over the whole cache")
    order = sorted(timings, key=lambda k: whats.index(k[-1]))
    evictor = Evictor()
    before = {"interleaved": lambda fn: None,  # the previous call was another file's
              "cold": lambda fn: evictor(),  # no weights left in the processor's caches
              "warm": lambda fn: fn()}  # the same call just before, as in a decode loop
    med = {}
    for regime, prepare in before.items():
        samples = {k: [] for k in timings}
        for _ in range(args.runs):
            for key in order:
                fn = timings[key]
                prepare(fn)
                start = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - start)
        med[regime] = {k: float(np.median(v)) * 1e3 for k, v in samples.items()}

    repo = os.path.dirname(os.path.abspath(__file__))
    # Written files whose pages are not yet on disk load with more resident
    # memory (measured: +17 MB for our int8 file at cache 256): flush them first.
    os.sync()
    memory = {}
    for key, path in files.items():
        proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, path, json.dumps(
            {"prompt": prompt, "position": POSITION, "threads": THREADS}), repo],
            capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        memory[key] = json.loads(proc.stdout.strip().splitlines()[-1])

    import platform

    import ai_edge_litert

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"last-level cache {evictor.cache_bytes / 2**20:.0f} MiB; ai-edge-litert "
          f"{getattr(ai_edge_litert, '__version__', '2.3')}, CompiledModel CPU, {THREADS} threads; "
          f"median of {args.runs} per regime, files interleaved")
    print("regimes: cold = the processor's caches evicted before the call (weights from "
          "memory, as on a phone, whose caches are far smaller than these files); "
          "interleaved = after a call on another file; warm = after the same call "
          "(a decode loop on this machine)")
    print(f"{'variant':8s} {'cache':>5s} {'what':28s} " + " ".join(
        f"{r + ' ours/theirs ms':>28s} {'ratio':>5s}" for r in med))
    for variant in VARIANTS:
        for cache in CACHES:
            for what in ("prefill", "decode"):
                theirs = ("theirs", variant, cache, what)
                for label, key in ((what, ("ours", variant, cache, what)),
                                   (f"{what} over the whole cache",
                                    ("ours", variant, cache, f"{what} over the whole cache"))):
                    if key not in timings:
                        continue
                    print(f"{variant:8s} {cache:5d} {label:28s} " + " ".join(
                        f"{m[key]:18.2f} / {m[theirs]:7.2f} {m[key] / m[theirs]:5.2f}"
                        for m in med.values()))
    print(f"\n{'variant':8s} {'cache':>5s} {'file MB ours':>13s} {'theirs':>8s} "
          f"{'RSS after load+run MB ours':>27s} {'theirs':>8s} {'ours/theirs':>12s}")
    for variant in VARIANTS:
        for cache in CACHES:
            o, t = memory[("ours", variant, cache)], memory[("theirs", variant, cache)]
            print(f"{variant:8s} {cache:5d} "
                  f"{os.path.getsize(files[('ours', variant, cache)]) / 1e6:13.1f} "
                  f"{os.path.getsize(files[('theirs', variant, cache)]) / 1e6:8.1f} "
                  f"{o['ran']:27.1f} {t['ran']:8.1f} {o['ran'] / t['ran']:12.2f}")
    print("(RSS after load alone, MB: " + ", ".join(
        f"{'/'.join(map(str, k))} {v['loaded']:.0f}" for k, v in memory.items()) + ")")


if __name__ == "__main__":
    main()
