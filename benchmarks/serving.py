"""Latency of the exported SavedModel through falcon_tf.serving vs the in-process Keras XLA forward.

Same shape as benchmarks/forward.py (batch 4, seq 128, 6 layers, hidden 512,
8 heads, intermediate 2048, vocab 8192, float32). The model is exported to a
temporary directory, loaded back with `falcon_tf.serving.FalconBackbone`
(both signatures), and timed interleaved with the Keras model's
`compiled_call`; medians of `--runs` calls after warm-up. Loader times include
its input validation and the numpy round trip, as a Python server would pay.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _bench import benchmark_backbone, interleaved_medians, timing_args  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = timing_args(parser)

    import tensorflow as tf

    from converters.export_saved_model import export_saved_model
    from falcon_tf.serving import FalconBackbone as ServingBackbone

    model, x = benchmark_backbone()
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model("bench", tmp, model=model)
        contenders = {"keras XLA (in process)": lambda: model.compiled_call(x).numpy()}
        for signature in ("serving_default", "serving_xla"):
            served = ServingBackbone.from_preset(os.path.join(tmp, "bench"), signature=signature)
            contenders[f"falcon_tf.serving {signature}"] = (lambda s: lambda: s(x))(served)
        reference = contenders["keras XLA (in process)"]()
        parity = {k: float(np.abs(f() - reference).max()) for k, f in contenders.items()}
        med = interleaved_medians(contenders, args.runs, args.warmup)
    base = med["keras XLA (in process)"]
    print(f"tensorflow {tf.__version__}, {os.cpu_count()} cores; batch 4, seq 128, float32; "
          f"median of {args.runs}")
    print(f"{'contender':40s} {'median ms':>10s} {'this / keras XLA':>17s} {'max|diff|':>10s}")
    for k, ms in med.items():
        print(f"{k:40s} {ms:10.2f} {ms / base:17.3f} {parity[k]:10.2e}")


if __name__ == "__main__":
    main()
