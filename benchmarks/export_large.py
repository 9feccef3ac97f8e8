"""Time and peak memory of exporting a model with falcon-rw-1b's shape to TFLite.

The model has falcon_refinedweb_1b_en's config (1,311,625,216 parameters,
5.2 GB in float32) with Keras's random initial weights: nothing is
downloaded. Each variant's export runs in its own child process, which goes
through the large-model route (converters/export_tflite_large.py: one piece
at a time, stitched, buffers past the FlatBuffer) and then runs the file in
a grandchild (ai-edge-litert only) to compare it with Keras. Printed per
variant: wall time, the export process's peak resident memory (getrusage of
that child; it holds the Keras model), the peak of the verifying process, the
peak of both together (sampled from /proc every 0.2 s), the file's size and
its parity against Keras from the manifest.

    python benchmarks/export_large.py                      # causal LM: int4, int8, fp16, fp32
    python benchmarks/export_large.py --task backbone --variants int8
    python benchmarks/export_large.py --variants int8 --out /tmp/big   # keep the files
    python benchmarks/export_large.py --variants int4 --int4-projections all  # under 0.85 GB
    # the GPU file: the table cut for lavapipe's 128 MiB buffers, prefill_8 and decode only
    python benchmarks/export_large.py --variants fp16 --cache-length 256 \
        --prefill-lengths 8 --decode-windows '' --gpu-buffer-mib 128 --out /tmp/gpu

Needs about 10.5 GiB of memory for int8 and int4 and 15.5 GiB for fp16 (the
export process and the verifying one together, measured; 23 GiB with the table
cut for the GPU; see export_tflite_large.memory_bytes) and, for fp32, 11 GB of
disk.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

NAME = "falcon_rw_1b_shape"
CHILD = f"NAME = {NAME!r}" + """
import sys
from falcon_tf import FalconBackbone
task, out, variant, cache = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
prefill = [int(n) for n in sys.argv[5].split(",")]
windows = None if sys.argv[6] == "default" else [int(n) for n in sys.argv[6].split(",") if n]
if sys.argv[7] != "none":  # cut the vocabulary table into blocks of at most this many MiB
    from converters import export_tflite
    export_tflite.GPU_BUFFER_BYTES = int(sys.argv[7]) * 2 ** 20
int4_projections = sys.argv[8]
model = FalconBackbone.from_preset("falcon_refinedweb_1b_en", load_weights=False)
# NAME is no preset, so no tokenizer is looked up (that would download it).
if task == "causal_lm":
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    export_tflite_causal_lm(NAME, out, model=model, variants=(variant,), cache_length=cache,
                            prefill_lengths=prefill, decode_windows=windows,
                            int4_projections=int4_projections)
else:
    from converters.export_tflite import export_tflite
    export_tflite(NAME, out, model=model, variants=(variant,), batch=1, seq=128)
"""


def _rss(pid):
    """Resident bytes of `pid` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(pid):
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            children = []
        found += children
        frontier += children
    return found


def run(task, variant, out, cache_length, prefill="8,32", windows="default", gpu_buffer="none",
        int4_projections="mlp"):
    """-> (seconds, export process peak, verify process peak, together peak) bytes."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, task, out, variant, str(cache_length),
                             prefill, windows, gpu_buffer, int4_projections])
    peaks = {"together": 0, "others": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            others = sum(_rss(p) for p in _descendants(proc.pid))
            peaks["others"] = max(peaks["others"], others)
            peaks["together"] = max(peaks["together"], _rss(proc.pid) + others)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{variant}: export failed with status {status}")
    # ru_maxrss of a waited child is the largest of it and its own children;
    # the sampler tells the two apart.
    return seconds, usage.ru_maxrss * 1024, peaks["others"], peaks["together"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["causal_lm", "backbone"], default="causal_lm")
    parser.add_argument("--variants", default="int4,int8,fp16,fp32")
    parser.add_argument("--cache-length", type=int, default=1024)
    parser.add_argument("--prefill-lengths", default="8,32")
    parser.add_argument("--decode-windows", default="default",
                        help="comma-separated W of the decode_<W> signatures; '' for none "
                             "(default: the exporter's)")
    parser.add_argument("--gpu-buffer-mib", default="none",
                        help="cut the vocabulary table for a GPU buffer cap of this many MiB "
                             "(export_tflite.GPU_BUFFER_BYTES; lavapipe's cap is 128)")
    parser.add_argument("--int4-projections", choices=["mlp", "all"], default="mlp",
                        help="causal LM: the projections int4 stores as int4")
    parser.add_argument("--out", default=None, help="where the artifacts stay (default: a "
                                                    "temporary directory, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="falcon-tf-export-large-") as tmp:
        out = args.out or tmp
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            seconds, export_peak, verify_peak, together = run(
                args.task, variant, out, args.cache_length, args.prefill_lengths,
                args.decode_windows, args.gpu_buffer_mib, args.int4_projections)
            with open(os.path.join(out, NAME, "manifest.json")) as f:
                data = json.load(f)
            section = data["causal_lm"] if args.task == "causal_lm" else data["tflite"]
            entry = section["variants"][variant]
            parity = entry["parity"]
            greedy = parity.get("greedy_tokens_equal_keras")
            print(f"{args.task} {variant}: {seconds:.0f} s wall; peak RSS export process "
                  f"{export_peak / 2**30:.2f} GiB, verifying process "
                  f"{verify_peak / 2**30:.2f} GiB, both together {together / 2**30:.2f} GiB; "
                  f"file {entry['bytes']:,} bytes; vs Keras max|diff| "
                  f"{parity['max_abs_diff_vs_keras']:.2e}, cosine "
                  f"{parity['cosine_vs_keras']:.6f}"
                  + ("" if greedy is None else f", greedy tokens equal: {greedy}")
                  + f"; GPU whole: {entry['gpu_fully_accelerated']}", flush=True)
            if not args.out:
                os.remove(os.path.join(out, NAME, entry["file"]))  # the next variant's room


if __name__ == "__main__":
    main()
