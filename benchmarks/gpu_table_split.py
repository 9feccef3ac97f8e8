"""Does falcon-rw-1b's vocabulary table run whole on the GPU accelerator once it
is split along the hidden axis?

    python benchmarks/gpu_table_split.py [--parts 1 2]

The table of falcon-rw-1b (50,304 x 2,048) is both the token lookup (GATHER)
and the tied LM head (FULLY_CONNECTED). ai-edge-litert's GPU accelerator
holds each weight in one buffer, in float16, and caps a buffer at the device's
limit (128 MiB on Mesa's lavapipe): the whole table, 206 MB in float16, cannot
be created. Cut into `parts` column blocks, each block is its own buffer: the
lookup GATHERs every block and CONCATENATEs the rows, the head adds the
blocks' FULLY_CONNECTED outputs over the matching slices of the hidden state.

For each `parts` this builds that graph (float32 weights of the real shape,
random values), converts it, asks the GPU accelerator whether it compiles
every op, and where it does, runs 8 tokens on the GPU and on the CPU and
prints the largest logit difference and how many rows' argmax agree. Each
runtime runs in a child process that imports only ai-edge-litert
(TensorFlow and the GPU accelerator in one process crash on this machine).
Peak memory: about 9.5 GiB.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VOCABULARY, HIDDEN, TOKENS = 50304, 2048, 8

_RUN = """
import json, os, sys
import numpy as np
os.makedirs(os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/runtime-%d" % os.getuid()),
            exist_ok=True)
from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator
path, tokens, vocabulary = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
out = {}
for name, accel in (("cpu", HardwareAccelerator.CPU), ("gpu", HardwareAccelerator.GPU)):
    model = CompiledModel.from_file(path, hardware_accel=accel)
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
    inputs[0].write(np.array([tokens], np.int32))
    model.run_by_index(0, inputs, outputs)
    out[name] = outputs[0].read(len(tokens) * vocabulary, np.float32).reshape(len(tokens), -1)
    if name == "gpu" and not model.is_fully_accelerated():
        sys.exit(3)
print(json.dumps({"max_abs_diff": float(np.abs(out["cpu"] - out["gpu"]).max()),
                  "max_abs_cpu": float(np.abs(out["cpu"]).max()),
                  "argmax_equal": int((out["cpu"].argmax(-1) == out["gpu"].argmax(-1)).sum())}))
"""


def table_graph(table, parts):
    """tokens (1, TOKENS) -> logits: lookup and tied head over `parts` column blocks."""
    import tensorflow as tf

    cuts = np.linspace(0, table.shape[1], parts + 1).astype(int)
    bounds = list(zip(cuts[:-1], cuts[1:]))
    blocks = [tf.constant(table[:, a:b]) for a, b in bounds]

    @tf.function(input_signature=[tf.TensorSpec((1, TOKENS), tf.int32, "tokens")])
    def forward(tokens):
        flat = tf.reshape(tokens, (-1,))
        x = tf.concat([tf.gather(block, flat) for block in blocks], axis=-1)
        x = tf.nn.relu(x) + 0.5  # stands in for the decoder between lookup and head
        logits = tf.add_n([tf.matmul(x[:, a:b], block, transpose_b=True)
                           for (a, b), block in zip(bounds, blocks)])
        return {"logits": tf.reshape(logits, (1, TOKENS, table.shape[0]))}

    return forward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    from converters.cli import load_tensorflow, quiet_third_party_logs

    quiet_third_party_logs()
    load_tensorflow()
    import tensorflow as tf

    from converters import export_tflite

    table = np.random.default_rng(0).standard_normal((VOCABULARY, HIDDEN), np.float32) * 0.02
    tokens = [5, 17, VOCABULARY - 1, 0, 25151, 25152, 1234, 40000]
    print(f"table {VOCABULARY:,} x {HIDDEN:,} float32 ({table.nbytes / 2**20:.0f} MiB; "
          f"{table.nbytes / 2 / 2**20:.0f} MiB in the GPU's float16), lookup + tied head")
    with tempfile.TemporaryDirectory() as folder:
        for parts in args.parts:
            forward = table_graph(table, parts)
            converter = tf.lite.TFLiteConverter.from_concrete_functions(
                [forward.get_concrete_function()], forward)
            start = time.perf_counter()
            path = os.path.join(folder, f"table_{parts}.tflite")
            with open(path, "wb") as f:
                f.write(converter.convert())
            block = VOCABULARY * -(-HIDDEN // parts) * 2
            whole = export_tflite.gpu_fully_accelerated(path)
            line = (f"{parts} part(s), {block / 2**20:.0f} MiB per float16 block: GPU whole "
                    f"{whole} (converted in {time.perf_counter() - start:.0f} s)")
            if whole:
                proc = subprocess.run([sys.executable, "-c", _RUN, path, json.dumps(tokens),
                                       str(VOCABULARY)], capture_output=True, text=True)
                if proc.returncode == 0:
                    found = json.loads(proc.stdout.strip().splitlines()[-1])
                    line += (f"; GPU vs CPU logits max|diff| {found['max_abs_diff']:.4f} "
                             f"(max|logit| {found['max_abs_cpu']:.2f}), argmax equal "
                             f"{found['argmax_equal']}/{len(tokens)}")
                else:
                    line += f"; the GPU run failed (exit {proc.returncode})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
