"""Memory of the SavedModel export, and of serving it, at falcon-rw-1b's shape.

The model has falcon_refinedweb_1b_en's config (1,311,625,216 parameters,
5.25 GB in float32) with Keras's random initial weights: nothing is
downloaded. Three child processes, one at a time, each timed and measured
alone (peak resident memory from getrusage of that child):

1. writes the model as a preset directory (the export's input);
2. `falcon-tf export --preset DIR --format saved_model` (writes, then loads the
   written files back to check them against Keras);
3. a process that imports only TensorFlow loads the SavedModel and runs its
   `generate` signature (4 prompt tokens to 12, greedy), as a server would.

It prints the variables' size on disk against the weights' bytes, and each
child's wall time and peak memory against the weights' bytes.

    python benchmarks/saved_model_large.py     # needs ~12 GiB of memory, ~11 GB of disk
"""

import os
import subprocess
import sys
import tempfile
import time

PRESET = "falcon_refinedweb_1b_en"

WRITE_PRESET = f"""
import sys
from falcon_tf import FalconBackbone
model = FalconBackbone.from_preset({PRESET!r}, load_weights=False)
print(model.count_params())
model.save_to_preset(sys.argv[1])
"""

SERVE = """
import sys, glob
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
out = loaded.signatures["generate"](
    token_ids=tf.constant([[11, 12, 13, 14]]), padding_mask=tf.constant([[1, 1, 1, 1]]),
    max_length=tf.constant(12), top_k=tf.constant(0), top_p=tf.constant(1.0),
    temperature=tf.constant(0.0), seed=tf.constant(0), stop_token_ids=tf.constant([], tf.int32))
print(out["token_ids"].numpy().tolist())
"""


def run(args, what):
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    output = proc.stdout.read()
    if status != 0:
        raise SystemExit(f"{what} failed with status {status}")
    return seconds, usage.ru_maxrss * 1024, output


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    gib = 2 ** 30
    with tempfile.TemporaryDirectory(dir=os.environ.get("FALCON_TF_BENCH_DIR")) as work:
        preset = os.path.join(work, "preset")
        seconds, peak, out = run([sys.executable, "-c", WRITE_PRESET, preset], "writing the preset")
        params = int(out.split()[0])
        weight_bytes = 4 * params
        print(f"{PRESET} shape: {params:,} parameters, {weight_bytes / 1e9:.2f} GB in float32; "
              f"preset written in {seconds:.0f} s (peak RSS {peak / gib:.1f} GiB)")

        artifacts = os.path.join(work, "artifacts")
        seconds, peak, _ = run([sys.executable, "-m", "converters.cli", "export", "--preset",
                                preset, "--out", artifacts, "--name", "big",
                                "--format", "saved_model"], "the export")
        version = os.path.join(artifacts, "big", "saved_model", "1")
        variables = du(os.path.join(version, "variables"))
        print(f"export: {seconds:.0f} s wall, peak RSS {peak / gib:.2f} GiB "
              f"({peak / weight_bytes:.2f} x the weights); variables/ {variables:,} bytes "
              f"({variables / weight_bytes:.3f} x the weights)")

        seconds, peak, out = run([sys.executable, "-c", SERVE, version], "serving")
        print(f"TF-only load + generate: {seconds:.0f} s wall, peak RSS {peak / gib:.2f} GiB "
              f"({peak / weight_bytes:.2f} x the weights); tokens {out.strip()}")


if __name__ == "__main__":
    main()
