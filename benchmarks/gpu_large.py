"""The full-size fp16 causal LM on ai-edge-litert's GPU accelerator against its CPU.

Reads an artifact `benchmarks/export_large.py` wrote for the GPU (a model
with falcon_refinedweb_1b_en's config and Keras's random initial weights;
nothing is downloaded):

    python benchmarks/export_large.py --variants fp16 --cache-length 256 \\
        --prefill-lengths 8 --decode-windows '' --gpu-buffer-mib 128 --out /tmp/gpu
    python benchmarks/gpu_large.py /tmp/gpu/falcon_rw_1b_shape

and runs its fp16 file through `falcon_tf.lite.FalconCausalLM` twice, each in
its own child process (TensorFlow is never imported; the GPU accelerator and
TensorFlow in one process crash on this machine): once with
`accelerator="gpu"`, which refuses a file that does not compile whole on the
GPU, and once on the CPU (XNNPACK, 2 threads). Each child computes the
prompt's logits and a greedy `generate` of `--new` tokens. Printed: load time,
tokens, tokens/s and peak RSS of each, the largest logit difference and the
cosine between the two, and whether the greedy tokens are equal.

Every signature the GPU accelerator sets up holds its own copy of the weights
in the device's memory, which on lavapipe is this machine's memory: export
few signatures for this check.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from falcon_tf.lite import FalconCausalLM
artifact, accelerator, out, new = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
prompt = [int(t) for t in sys.argv[6].split(",")]
start = time.perf_counter()
lm = FalconCausalLM.from_preset(artifact, variant="fp16", accelerator=accelerator,
                                num_threads=2 if accelerator == "cpu" else None)
loaded = time.perf_counter() - start
logits = lm.logits(prompt)
start = time.perf_counter()
tokens = lm.generate([prompt], max_length=len(prompt) + new, stop_token_ids=None)[0]
seconds = time.perf_counter() - start
np.save(out, logits)
print(json.dumps({"load_s": loaded, "generate_s": seconds, "tokens": [int(t) for t in tokens],
                  "tensorflow_loaded": "tensorflow" in sys.modules,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(artifact, accelerator, prompt, new, tmp):
    out = os.path.join(tmp, f"{accelerator}.npy")
    env = {**os.environ, "XDG_RUNTIME_DIR": os.path.join(tmp, "xdg")}
    proc = subprocess.run([sys.executable, "-c", _RUN, ROOT, artifact, accelerator, out,
                           str(new), ",".join(map(str, prompt))],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{accelerator} run failed (status {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["tensorflow_loaded"]:
        raise SystemExit(f"the {accelerator} child loaded TensorFlow")
    return result, np.load(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact directory written by export_large.py --out")
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--new", type=int, default=8)
    args = parser.parse_args()
    with open(os.path.join(args.artifact, "manifest.json")) as f:
        section = json.load(f)["causal_lm"]
    entry = section["variants"]["fp16"]
    prompt = np.random.default_rng(1).integers(0, section["vocabulary_size"],
                                               args.prompt_length).tolist()
    print(f"{entry['file']}: {entry['bytes']:,} bytes, cache {section['cache_len']}, "
          f"prefill {section['prefill_lengths']}, decode windows {section['decode_windows']}; "
          f"recorded GPU whole: {entry.get('gpu_fully_accelerated')}")
    with tempfile.TemporaryDirectory(prefix="falcon-tf-gpu-large-") as tmp:
        results = {}
        for accelerator in ("gpu", "cpu"):
            result, logits = run(args.artifact, accelerator, prompt, args.new, tmp)
            results[accelerator] = result, logits
            new = result["tokens"][len(prompt):]
            print(f"{accelerator}: loaded in {result['load_s']:.1f} s; {len(new)} tokens in "
                  f"{result['generate_s']:.1f} s ({len(new) / result['generate_s']:.2f} "
                  f"tokens/s); peak RSS {result['peak_rss'] / 2**30:.2f} GiB; tokens {new}",
                  flush=True)
    (gpu, gpu_logits), (cpu, cpu_logits) = results["gpu"], results["cpu"]
    a, b = gpu_logits.ravel().astype(np.float64), cpu_logits.ravel().astype(np.float64)
    print(f"prompt logits GPU vs CPU: max|diff| {np.abs(a - b).max():.4f} (largest "
          f"|logit| {np.abs(b).max():.3f}), cosine {a @ b / np.linalg.norm(a) / np.linalg.norm(b):.6f}"
          f", argmax equal in {int((gpu_logits.argmax(-1) == cpu_logits.argmax(-1)).sum())}/"
          f"{len(prompt)} positions; greedy tokens equal: {gpu['tokens'] == cpu['tokens']}")


if __name__ == "__main__":
    main()
