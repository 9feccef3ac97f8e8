"""Greedy generation speed: falcon_tf on every runtime vs keras-hub and transformers.

The backbone benchmark's shape (6 layers, hidden 512, 8 heads, intermediate
2048, vocab 8192, float32), one prompt of 32 tokens, 64 new tokens, greedy,
the same weights everywhere (every contender's tokens are checked equal to
falcon_tf's before timing). Reports tokens/s (64 / median wall time of a whole
`generate`, prompt processing included) and the ratio to keras-hub's
`FalconCausalLM.generate` measured in the same run.

Then, for the Keras model: the time of one cached decode step at growing
positions against recomputing the whole sequence (the uncached forward), and
the decode step against the memory-bandwidth bound: float32 weight bytes read
per token / the copy bandwidth of a large numpy array measured here.

For each TFLite variant, its decode step (`falcon_tf.lite`'s host loop, one
step at positions 32..95, median) against the bound of its own weight bytes:
the constant tensors its decode signature feeds to FULLY_CONNECTED (every
projection and the LM head, as stored in the file; behind a DEQUANTIZE for
fp16), read once per token. And
the decode step of the int8 and fp32 files exported with caches of 256, 1024
and 2048 slots, at the same positions, interleaved.

    python benchmarks/generate.py [--runs 15] [--no-torch]
"""

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from _bench import SHAPE, benchmark_backbone, interleaved_medians, timing_args  # noqa: E402

PROMPT, NEW = 32, 64
LITE_VARIANTS = ("fp32", "fp16", "int8", "int4")
CACHE_SIZES = (256, 1024, 2048)


def copy_bandwidth(megabytes=512, repeats=5):
    """Bytes moved per second by numpy copying a large float32 array (read + write)."""
    src = np.ones(megabytes * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def fully_connected_bytes(path, signature="decode"):
    """Bytes of the constant tensors that `signature`'s FULLY_CONNECTED ops read."""
    from ai_edge_litert import schema_py_generated as schema

    import mmap

    with open(path, "rb") as f:  # mapped: files past 2 GiB are not read into memory
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    model = schema.Model.GetRootAsModel(data, 0)
    fc = schema.BuiltinOperator.FULLY_CONNECTED
    index = next(i for i in range(model.SignatureDefsLength())
                 if model.SignatureDefs(i).SignatureKey().decode() == signature)
    graph = model.Subgraphs(model.SignatureDefs(index).SubgraphIndex())
    dequantized = {}  # output tensor of a DEQUANTIZE -> its (constant) input
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == \
                schema.BuiltinOperator.DEQUANTIZE:
            dequantized[op.Outputs(0)] = op.Inputs(0)
    seen, total = set(), 0
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != fc:
            continue
        for t in op.InputsAsNumpy():
            t = dequantized.get(int(t), int(t))  # fp16: the stored weight behind DEQUANTIZE
            buffer = graph.Tensors(t).Buffer() if t >= 0 else 0
            if buffer and buffer not in seen:
                seen.add(buffer)
                total += model.Buffers(buffer).DataLength() or model.Buffers(buffer).Size()
    return total


def decode_step_ms(lite, sequence, runs):
    """Median ms of one decode step of `lite` (falcon_tf.lite.FalconCausalLM)
    over `sequence` (PROMPT + NEW ids): its prompt prefilled, then its tokens
    decoded at positions PROMPT .. PROMPT + NEW - 1, `runs` passes."""
    from falcon_tf.lite.causal_lm import _decode, _prefill

    runners, steps = lite._runners, []
    for _ in range(runs):
        caches = _prefill(runners, sequence[:PROMPT], runners.empty_cache())
        for position in range(PROMPT, PROMPT + NEW):
            start = time.perf_counter()
            _, caches = _decode(runners, sequence[position], position, caches)
            steps.append(time.perf_counter() - start)
    return float(np.median(steps)) * 1e3


def transformers_lm(ours):
    """transformers' FalconForCausalLM holding our weights (tied head)."""
    import transformers
    from forward import to_transformers

    base = to_transformers(ours, SHAPE)
    lm = transformers.FalconForCausalLM(base.config).eval()
    lm.transformer.load_state_dict(base.state_dict())
    lm.tie_weights()
    return lm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-torch", action="store_true", help="skip transformers")
    args = timing_args(parser)

    import keras_hub
    import tensorflow as tf

    from converters.export_saved_model import export_saved_model
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf import FalconCausalLM
    from falcon_tf.model.attention_bias import causal_cache_mask
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.serving import FalconCausalLM as ServingLM

    backbone, _ = benchmark_backbone()
    total = PROMPT + NEW
    lm = FalconCausalLM(backbone, cache_length=total)
    prompt = np.random.default_rng(1).integers(0, SHAPE["vocabulary_size"], PROMPT).tolist()
    ours = lm.generate([prompt], max_length=total, stop_token_ids=None)[0]

    tmp = tempfile.mkdtemp(prefix="falcon-tf-bench-")
    backbone.save_to_preset(os.path.join(tmp, "preset"))
    kh = keras_hub.models.FalconCausalLM(
        backbone=keras_hub.models.FalconBackbone.from_preset(os.path.join(tmp, "preset")),
        preprocessor=None)
    kh.compile(sampler="greedy")
    kh_ids = np.zeros((1, total), "int32")
    kh_ids[0, :PROMPT] = prompt
    kh_input = {"token_ids": kh_ids, "padding_mask": np.arange(total)[None] < PROMPT}

    export_saved_model("bench", tmp, model=backbone)
    served = ServingLM.from_preset(os.path.join(tmp, "bench"), cache_length=total)
    export_tflite_causal_lm("bench", tmp, model=backbone, variants=LITE_VARIANTS,
                            cache_length=total, prefill_lengths=(PROMPT,))
    lites = {v: LiteLM.from_preset(os.path.join(tmp, "bench"), variant=v, num_threads=2)
             for v in LITE_VARIANTS}

    contenders = {
        "falcon_tf Keras XLA": lambda: lm.generate([prompt], max_length=total,
                                                   stop_token_ids=None),
        "falcon_tf SavedModel (generate signature)": lambda: served.generate(
            [prompt], max_length=total, stop_token_ids=None),
        **{f"falcon_tf TFLite {v} (CPU, 2 threads)":
           (lambda lite: lambda: lite.generate([prompt], max_length=total,
                                               stop_token_ids=None))(lites[v])
           for v in LITE_VARIANTS},
        "keras-hub FalconCausalLM XLA": lambda: kh.generate(kh_input, stop_token_ids=None),
    }
    checks = {
        "keras-hub": np.asarray(contenders["keras-hub FalconCausalLM XLA"]()["token_ids"])[
            0].tolist(),
        "SavedModel": contenders["falcon_tf SavedModel (generate signature)"]()[0],
        **{f"TFLite {v}": contenders[f"falcon_tf TFLite {v} (CPU, 2 threads)"]()[0]
           for v in LITE_VARIANTS},
    }
    if not args.no_torch:
        import torch

        hf = transformers_lm(backbone)
        ids_t = torch.tensor([prompt])

        def run_hf():
            with torch.inference_mode():
                return hf.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                                   do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW,
                                   pad_token_id=0, eos_token_id=None)

        contenders["transformers FalconForCausalLM (torch CPU)"] = run_hf
        checks["transformers"] = run_hf()[0].tolist()
    med = interleaved_medians(contenders, args.runs, args.warmup)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"tensorflow {tf.__version__}, keras-hub {keras_hub.__version__}")
    print(f"shape: {SHAPE}, float32; batch 1, prompt {PROMPT}, {NEW} new tokens, greedy; "
          f"median of {args.runs} after {args.warmup} warm-up")
    print("same tokens as falcon_tf Keras: " + ", ".join(
        f"{k} {'yes' if v == ours else 'NO'}" for k, v in checks.items()))
    base = med["keras-hub FalconCausalLM XLA"]
    print(f"{'contender':44s} {'median ms':>10s} {'tokens/s':>9s} {'x keras-hub':>12s}")
    for name, ms in med.items():
        print(f"{name:44s} {ms:10.1f} {NEW / ms * 1e3:9.1f} {base / ms:12.2f}")

    # Decode cost per position: cached step vs recomputing the sequence.
    step = tf.function(lambda t, p, c: lm.call_with_cache(
        t, p, causal_cache_mask(p, total), c), jit_compile=True)
    forward = tf.function(lambda x: lm(x), jit_compile=True)
    caches = lm.empty_cache(1, total)
    token = tf.constant([[prompt[0]]], tf.int32)
    rows = []
    for position in (8, 32, 64, 95):
        pos = tf.constant([[position]], tf.int32)
        seq = {"token_ids": tf.constant([ours[:position + 1]], tf.int32),
               "padding_mask": tf.ones((1, position + 1), tf.int32)}
        timing = interleaved_medians({
            "cached": lambda: step(token, pos, caches)[0].numpy(),
            "recompute": lambda: forward(seq).numpy()}, args.runs, args.warmup)
        rows.append((position, timing["cached"], timing["recompute"]))
    print(f"{'position':>8s} {'cached decode ms':>17s} {'recompute ms':>13s}")
    for position, cached, recompute in rows:
        print(f"{position:8d} {cached:17.2f} {recompute:13.2f}")

    # A decode step inside the compiled loop: whole generate minus prefill and
    # first token, over the remaining steps.
    loop = interleaved_medians({
        "prefill": lambda: lm.generate([prompt], max_length=PROMPT + 1, stop_token_ids=None),
        "full": contenders["falcon_tf Keras XLA"]}, args.runs, args.warmup)
    in_loop_ms = (loop["full"] - loop["prefill"]) / (NEW - 1)
    bandwidth = copy_bandwidth()
    weight_bytes = backbone.count_params() * 4  # every weight is read once per token
    bound_ms = weight_bytes / bandwidth * 1e3
    print(f"weights {weight_bytes / 1e6:.1f} MB read per token at {bandwidth / 1e9:.1f} GB/s "
          f"(numpy copy, same run) = {bound_ms:.2f} ms per token at best")
    print(f"decode step in the XLA loop {in_loop_ms:.2f} ms = {bound_ms / in_loop_ms:.2f} of "
          f"the bandwidth limit; a step called from Python (above) "
          f"{float(np.median([r[1] for r in rows])):.2f} ms")

    # Each TFLite variant's decode step against the bound of its own weight bytes.
    steps = {v: decode_step_ms(lites[v], ours, 3) for v in LITE_VARIANTS}
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth (numpy, now) {bandwidth / 1e9:.1f} GB/s")
    print(f"{'TFLite':7s} {'FC bytes/token':>15s} {'bound ms':>9s} {'decode step ms':>15s} "
          f"{'bound/step':>11s} {'tokens/s (generate)':>20s} {'x fp32':>7s}")
    fp32_ms = med["falcon_tf TFLite fp32 (CPU, 2 threads)"]
    for v in LITE_VARIANTS:
        weight = fully_connected_bytes(lites[v].path)
        bound = weight / bandwidth * 1e3
        ms = med[f"falcon_tf TFLite {v} (CPU, 2 threads)"]
        print(f"{v:7s} {weight:15,d} {bound:9.2f} {steps[v]:15.2f} {bound / steps[v]:11.2f} "
              f"{NEW / ms * 1e3:20.1f} {fp32_ms / ms:7.2f}")

    # The decode step against the cache's capacity: the same positions, files
    # exported with larger caches (their decode_<W> signatures cover them).
    by_cache = {}
    for cache in CACHE_SIZES:
        out = os.path.join(tmp, f"cache{cache}")
        export_tflite_causal_lm("bench", out, model=backbone, variants=("fp32", "int8"),
                                cache_length=cache, prefill_lengths=(PROMPT,))
        for v in ("fp32", "int8"):
            by_cache[(v, cache)] = LiteLM.from_preset(os.path.join(out, "bench"), variant=v,
                                                      num_threads=2)
    times = {k: [] for k in by_cache}
    for _ in range(max(3, args.runs // 5)):  # interleaved rounds of 64 steps each
        for key, lite in by_cache.items():
            times[key].append(decode_step_ms(lite, ours, 1))
    print(f"{'TFLite':7s} " + " ".join(f"{'cache ' + str(c) + ' ms':>14s}" for c in CACHE_SIZES)
          + " " + " ".join(f"{str(c) + '/256':>9s}" for c in CACHE_SIZES[1:]))
    for v in ("fp32", "int8"):
        ms = {c: float(np.median(times[(v, c)])) for c in CACHE_SIZES}
        print(f"{v:7s} " + " ".join(f"{ms[c]:14.2f}" for c in CACHE_SIZES) + " "
              + " ".join(f"{ms[c] / ms[256]:9.2f}" for c in CACHE_SIZES[1:]))


if __name__ == "__main__":
    main()
