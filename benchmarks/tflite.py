"""Per-variant CPU latency and size of the .tflite exports vs the Keras XLA forward.

Same shape as benchmarks/forward.py (batch 4, seq 128, 6 layers, hidden 512,
8 heads, intermediate 2048, vocab 8192). Each variant is exported to a
temporary directory and run through `falcon_tf.lite.FalconBackbone` on the
CPU (ai-edge-litert with XNNPACK, 2 threads), interleaved with Keras's
`compiled_call`; medians of `--runs` calls after warm-up.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _bench import benchmark_backbone, interleaved_medians, timing_args  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = timing_args(parser)

    from converters.export_tflite import VARIANTS, export_tflite
    from falcon_tf.lite import FalconBackbone as LiteBackbone

    model, x = benchmark_backbone()
    with tempfile.TemporaryDirectory() as tmp:
        entries = export_tflite("bench", tmp, model=model, batch=4, seq=128)
        contenders = {"keras XLA (in process)": lambda: model.compiled_call(x).numpy()}
        for variant in VARIANTS:
            lite = LiteBackbone.from_preset(os.path.join(tmp, "bench"), variant=variant,
                                            num_threads=2)
            contenders[f"tflite {variant} (CPU, 2 threads)"] = (lambda m: lambda: m(x))(lite)
        med = interleaved_medians(contenders, args.runs, args.warmup)
    base = med["keras XLA (in process)"]
    print(f"batch 4, seq 128, float32 activations; {os.cpu_count()} cores; median of {args.runs}")
    print(f"{'contender':32s} {'median ms':>10s} {'/ keras XLA':>12s} {'bytes':>13s} "
          f"{'cosine':>9s} {'GPU whole':>9s}")
    for name, ms in med.items():
        variant = name.split()[1] if name.startswith("tflite") else None
        entry = entries.get(variant, {})
        size = f"{entry['bytes']:13,d}" if entry else " " * 13
        cos = f"{entry['parity']['cosine_vs_keras']:9.6f}" if entry else " " * 9
        gpu = {True: "yes", False: "no", None: "n/a"}[entry.get("gpu_fully_accelerated")] \
            if entry else ""
        print(f"{name:32s} {ms:10.2f} {ms / base:12.3f} {size} {cos} {gpu:>9s}")


if __name__ == "__main__":
    main()
