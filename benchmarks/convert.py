"""Memory and time of `falcon-tf convert` on a checkpoint shaped like falcon-rw-1b.

Writes a random-weight Hugging Face checkpoint with falcon-rw-1b's config
(bfloat16 safetensors, as the published one, sharded one layer per file) into a
temporary directory, then runs the conversion in a child process and reports
its wall time and peak resident memory (getrusage of the child, the figure
`/usr/bin/time -v` prints as "Maximum resident set size"). A second child that
only imports what the converter imports gives the interpreter's own footprint.

    python benchmarks/convert.py               # falcon-rw-1b's shape (needs ~6 GB of disk)
    python benchmarks/convert.py --layers 4    # smaller
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time



def write_checkpoint(directory, layers, hidden=2048, vocab=50304, seed=0):
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    config = {"model_type": "falcon", "architectures": ["FalconForCausalLM"],
              "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": 32, "alibi": True, "multi_query": False,
              "new_decoder_architecture": False, "parallel_attn": False, "bias": True,
              "layer_norm_epsilon": 1e-5, "torch_dtype": "bfloat16"}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(ml_dtypes.bfloat16)

    weight_map = {}
    shards = [("embeddings", {"transformer.word_embeddings.weight": lambda: rand(vocab, hidden),
                              "transformer.ln_f.weight": lambda: rand(hidden),
                              "transformer.ln_f.bias": lambda: rand(hidden)})]
    for i in range(layers):
        p = f"transformer.h.{i}."
        shards.append((f"layer{i}", {
            p + "input_layernorm.weight": lambda: rand(hidden),
            p + "input_layernorm.bias": lambda: rand(hidden),
            p + "post_attention_layernorm.weight": lambda: rand(hidden),
            p + "post_attention_layernorm.bias": lambda: rand(hidden),
            p + "self_attention.query_key_value.weight": lambda: rand(3 * hidden, hidden),
            p + "self_attention.query_key_value.bias": lambda: rand(3 * hidden),
            p + "self_attention.dense.weight": lambda: rand(hidden, hidden),
            p + "self_attention.dense.bias": lambda: rand(hidden),
            p + "mlp.dense_h_to_4h.weight": lambda: rand(4 * hidden, hidden),
            p + "mlp.dense_h_to_4h.bias": lambda: rand(4 * hidden),
            p + "mlp.dense_4h_to_h.weight": lambda: rand(hidden, 4 * hidden),
            p + "mlp.dense_4h_to_h.bias": lambda: rand(hidden),
        }))
    for n, (_, makers) in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {key: make() for key, make in makers.items()}
        save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)


def run_child(args):
    """Runs a child; returns (seconds, peak RSS bytes) of that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{args} failed with status {status}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="24 = falcon-rw-1b")
    parser.add_argument("--write-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_only:
        write_checkpoint(args.write_only, args.layers)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        source, output = os.path.join(tmp, "hf"), os.path.join(tmp, "preset")
        os.makedirs(source)
        # Written by a child: a parent's own peak would show up in the children's
        # ru_maxrss (fork copies it), so this process stays small.
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write-only", source,
                        "--layers", str(args.layers)], check=True)
        checkpoint = dir_bytes(source)
        print(f"wrote a random falcon-rw-1b-shaped checkpoint ({args.layers} layers, bfloat16): "
              f"{checkpoint / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s")
        _, baseline = run_child([sys.executable, "-c",
                                 "import converters.convert_hf, h5py, safetensors, ml_dtypes"])
        seconds, peak = run_child([sys.executable, "-m", "converters.cli", "convert",
                                   source, output])
        written = dir_bytes(output)
    print(f"convert: {seconds:.1f} s wall, peak RSS {peak / 2**30:.2f} GiB "
          f"({peak / checkpoint:.2f} x the checkpoint's {checkpoint / 2**30:.2f} GiB); "
          f"imports alone {baseline / 2**30:.2f} GiB; preset written {written / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
