"""Greedy generation at falcon-rw-1b's shape: every exported TFLite variant.

Reads the artifact `benchmarks/export_large.py --out DIR` leaves (a model with
falcon_refinedweb_1b_en's config and Keras's random initial weights; nothing
is downloaded), then for each causal-LM variant in its manifest, one at a
time, on ai-edge-litert's CPU (XNNPACK, 2 threads) through `falcon_tf.lite`:
tokens/s of a whole greedy `generate` (prompt 32, 64 new tokens, median of
`--runs`), the median decode step at positions 32..95, and that step against
the bandwidth bound of the file's own weight bytes (the constant tensors its
decode signature feeds to FULLY_CONNECTED, read once per token) at the copy
bandwidth numpy measures in the same run; and the prefill of the prompt but
its last token (31 tokens from slot 0: prefill_32 padded) on the signature the
host takes (windowed_prefill_32_<W> where the file has one) against
prefill_32 over the whole cache, alternated, median of `--runs` + 2. `--keras` adds Keras XLA's
`generate` at the same shape (its own random weights: speed only).

    python benchmarks/export_large.py --variants int8,int4,fp16 --out /tmp/big
    python benchmarks/generate_large.py /tmp/big/falcon_rw_1b_shape [--keras]
"""

import argparse
import gc
import json
import os
import platform
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from generate import NEW, PROMPT, copy_bandwidth, decode_step_ms, fully_connected_bytes  # noqa: E402,E501


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact directory written by export_large.py --out")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keras", action="store_true", help="also Keras XLA generate")
    args = parser.parse_args()

    from falcon_tf.lite import FalconCausalLM as LiteLM

    with open(os.path.join(args.artifact, "manifest.json")) as f:
        section = json.load(f)["causal_lm"]
    vocabulary = section["vocabulary_size"]
    prompt = np.random.default_rng(1).integers(0, vocabulary, PROMPT).tolist()
    total = PROMPT + NEW
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.artifact}: cache {section['cache_len']}, decode windows "
          f"{section.get('decode_windows')}, prefill windows "
          f"{section.get('prefill_windows')}; prompt {PROMPT}, {NEW} new tokens, greedy, "
          f"median of {args.runs}")
    rows, tokens = [], {}
    for variant in ("fp32", "fp16", "int8", "int4"):
        entry = section["variants"].get(variant)
        if entry is None:
            continue
        path = os.path.join(args.artifact, entry["file"])
        start = time.perf_counter()
        lite = LiteLM.from_preset(args.artifact, variant=variant, num_threads=2)
        tokens[variant] = lite.generate([prompt], max_length=total, stop_token_ids=None)[0]
        load_s = time.perf_counter() - start
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            lite.generate([prompt], max_length=total, stop_token_ids=None)
            times.append(time.perf_counter() - start)
        step = decode_step_ms(lite, tokens[variant], 1)
        prefill = prefill_ms(lite._runners, prompt[:-1], args.runs + 2)
        weight = fully_connected_bytes(path)
        bandwidth = copy_bandwidth()
        bound = weight / bandwidth * 1e3
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        rows.append((variant, entry["bytes"], weight, bound, step, NEW / np.median(times),
                     load_s, rss, bandwidth, prefill))
        print(f"{variant}: loaded and first generate in {load_s:.0f} s, peak RSS so far "
              f"{rss:.2f} GiB", flush=True)
        del lite
        gc.collect()
    if args.keras:
        from falcon_tf import FalconBackbone, FalconCausalLM

        lm = FalconCausalLM(FalconBackbone.from_preset("falcon_refinedweb_1b_en",
                                                       load_weights=False),
                            cache_length=section["cache_len"])
        lm.generate([prompt], max_length=total, stop_token_ids=None)  # compiles
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            lm.generate([prompt], max_length=total, stop_token_ids=None)
            times.append(time.perf_counter() - start)
        print(f"Keras XLA generate: {NEW / np.median(times):.2f} tokens/s")
    print(f"{'TFLite':7s} {'file bytes':>14s} {'FC bytes/token':>15s} {'bound ms':>9s} "
          f"{'decode step ms':>15s} {'bound/step':>11s} {'tokens/s':>9s} {'x fp16':>7s} "
          f"{'GB/s':>5s} {'prefill ms (host / whole cache)':>32s}")
    base = {r[0]: r[5] for r in rows}.get("fp16")
    for variant, size, weight, bound, step, rate, _, _, bandwidth, prefill in rows:
        ratio = f"{rate / base:7.2f}" if base else f"{'-':>7s}"
        print(f"{variant:7s} {size:14,d} {weight:15,d} {bound:9.1f} {step:15.1f} "
              f"{bound / step:11.2f} {rate:9.2f} {ratio} {bandwidth / 1e9:5.1f} "
              f"{prefill[0]:20.1f} / {prefill[1]:9.1f}")


def prefill_ms(runners, tokens, runs):
    """Median ms of prefilling `tokens` from slot 0 as the host loop does, and
    on prefill_<L> alone (the whole cache), the two alternated."""
    from falcon_tf.lite.causal_lm import _prefill

    times = ([], [])
    for _ in range(runs):
        for i, r in enumerate((runners, runners.whole_cache())):
            caches = r.empty_cache()  # zeroing the caches is not timed
            start = time.perf_counter()
            _prefill(r, tokens, caches)
            times[i].append(time.perf_counter() - start)
    return tuple(float(np.median(t)) * 1e3 for t in times)


if __name__ == "__main__":
    main()
