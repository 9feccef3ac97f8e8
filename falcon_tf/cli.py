"""The `falcon-tf` command: thin wrappers over importable functions."""

import argparse
import os
import sys
import time

DEFAULT_PRESET = "falcon_tiny_random"


def demo(preset=DEFAULT_PRESET, out_dir="artifacts", batch=1, seq=128, runs=20):
    """Builds a preset, writes it to `out_dir/<preset>/keras_preset`, reloads it,
    and returns one line: XLA-vs-eager and reload parity, and XLA latency."""
    import numpy as np

    from falcon_tf import FalconBackbone

    model = FalconBackbone.from_preset(preset)
    name = os.path.basename(os.path.normpath(preset)) if os.path.isdir(preset) else preset
    preset_dir = os.path.join(out_dir, name, "keras_preset")
    model.save_to_preset(preset_dir)
    reloaded = FalconBackbone.from_preset(preset_dir)

    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, model.vocabulary_size, (batch, seq)).astype("int32"),
         "padding_mask": np.ones((batch, seq), "int32")}
    eager = model(x).numpy()
    xla = model.compiled_call(x).numpy()  # compiles once
    reload_diff = np.abs(reloaded.compiled_call(x).numpy() - xla).max()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.compiled_call(x).numpy()
        times.append(time.perf_counter() - start)
    return (f"{name}: XLA vs eager max|diff| {np.abs(xla - eager).max():.2e}, "
            f"reloaded from {preset_dir} max|diff| {reload_diff:.2e}, "
            f"XLA forward {np.median(times) * 1e3:.2f} ms "
            f"(median of {runs}, batch {batch} x seq {seq})")


def list_presets():
    from falcon_tf.presets import BACKBONE_PRESETS

    lines = []
    for name, entry in BACKBONE_PRESETS.items():
        meta = entry["metadata"]
        source = entry.get("kaggle_handle") or entry.get("hf_handle") \
            or "builtin (random weights, no download)"
        lines.append(f"{name}  {meta['params']:,} params  {source}\n    {meta['description']}")
    return "\n".join(lines)


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="falcon-tf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="build a preset, run it with XLA, print parity and latency")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"builtin name, kaggle:// handle or local directory "
                        f"(default {DEFAULT_PRESET}, embedded, random weights)")
    p.add_argument("--out", default="artifacts", help="where the preset is written")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    sub.add_parser("presets", help="list builtin presets")
    p = sub.add_parser("convert", help="convert a Hugging Face Falcon checkpoint to a preset")
    p.add_argument("source", help="hf://org/name[@revision] or a local checkpoint directory")
    p.add_argument("output", help="preset directory to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if args.seq <= 0:
                parser.error("--seq must be a positive integer")
            print(demo(args.preset, args.out, seq=args.seq))
        elif args.command == "convert":
            from converters.convert_hf import convert_checkpoint

            print(f"wrote {convert_checkpoint(args.source, args.output)}")
        else:
            print(list_presets())
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"falcon-tf: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
