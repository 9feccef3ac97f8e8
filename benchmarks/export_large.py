"""Time and peak memory of the int8 TFLite export of a model with falcon-rw-1b's shape.

The model has falcon_refinedweb_1b_en's config (1,311,625,216 parameters,
5.2 GB in float32) with Keras's random initial weights: nothing is
downloaded. The export runs in a child process whose wall time and peak
resident memory (getrusage of that child alone) are printed, with the file's
size and parity against Keras from the manifest. fp32 and fp16 do not fit a
FlatBuffer's 2 GiB and are refused; int8 does.

    python benchmarks/export_large.py            # needs ~23 GiB of memory and ~6 GB of disk
"""

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = """
import sys
from converters.export_tflite import export_tflite
from falcon_tf import FalconBackbone
model = FalconBackbone.from_preset("falcon_refinedweb_1b_en", load_weights=False)
export_tflite("falcon_refinedweb_1b_en", sys.argv[1], model=model, variants=("int8",),
              batch=1, seq=128)
"""


def main():
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, out])
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"export failed with status {status}")
        with open(os.path.join(out, "falcon_refinedweb_1b_en", "manifest.json")) as f:
            entry = json.load(f)["tflite"]["variants"]["int8"]
    print(f"int8 export of a falcon-rw-1b-shaped model (random weights): {seconds:.0f} s wall, "
          f"peak RSS {usage.ru_maxrss / 2**20:.1f} GiB; file {entry['bytes']:,} bytes; "
          f"vs Keras max|diff| {entry['parity']['max_abs_diff_vs_keras']:.2e}, cosine "
          f"{entry['parity']['cosine_vs_keras']:.6f}; GPU whole: {entry['gpu_fully_accelerated']}")


if __name__ == "__main__":
    main()
