"""What a float16 or int8 key/value cache would cost in logits, measured in Keras.

The causal LM's caches are float32 (the export contract). This runs the Keras
cached forward (a prefill of 32 tokens, then 16 decode steps) on trained-like
weights (tests/trained_like.py, the TFLite tests' shape: vocabulary 2048,
hidden 128, 2 layers), once with float32 caches and once with every new key
and value rounded as a float16 cache or an int8 cache (symmetric, one scale
per token and head) would store it, and prints the logit cosine against the
float32 cache for seeds 0, 1, 2.

    python benchmarks/kv_cache_precision.py
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

import numpy as np  # noqa: E402

CACHE, PROMPT, STEPS = 64, 32, 16


def rounding(kind):
    """new keys or values (b, kv, L, d) -> as a `kind` cache would hold them."""
    import tensorflow as tf

    def fp16(x):
        return tf.cast(tf.cast(x, tf.float16), tf.float32)

    def int8(x):
        scale = tf.reduce_max(tf.abs(x), axis=-1, keepdims=True) / 127.0
        scale = tf.where(scale == 0, tf.ones_like(scale), scale)
        return tf.round(x / scale) * scale

    return {"float32": lambda x: x, "float16": fp16, "int8": int8}[kind]


def logits(lm, sequence, kind):
    import tensorflow as tf

    from falcon_tf.model.attention_bias import causal_cache_mask
    from falcon_tf.model.causal_lm import scatter_write

    store = rounding(kind)
    caches, rows = lm.empty_cache(1, CACHE), []
    spans = [(0, PROMPT)] + [(p, p + 1) for p in range(PROMPT, PROMPT + STEPS)]
    for start, end in spans:
        positions = tf.constant(np.arange(start, end, dtype=np.int32)[None])
        write = scatter_write(positions)
        out, caches = lm.call_with_cache(
            tf.constant(sequence[None, start:end]), positions,
            causal_cache_mask(positions, CACHE), caches,
            write=lambda cache, new, write=write: write(cache, store(new)))
        rows.append(out.numpy()[0])
    return np.concatenate(rows).ravel()


def main():
    from trained_like import SHAPE, trained_like

    from falcon_tf import FalconBackbone
    from falcon_tf.model.causal_lm import FalconCausalLM

    print("logit cosine against a float32 cache (prefill 32 + 16 decode steps, "
          "trained-like weights)")
    for seed in (0, 1, 2):
        lm = FalconCausalLM(trained_like(FalconBackbone(**SHAPE), seed=seed),
                            cache_length=CACHE)
        sequence = np.random.default_rng(seed).integers(
            0, SHAPE["vocabulary_size"], PROMPT + STEPS).astype("int32")
        exact = logits(lm, sequence, "float32")
        for kind in ("float16", "int8"):
            got = logits(lm, sequence, kind)
            cosine = got @ exact / np.linalg.norm(got) / np.linalg.norm(exact)
            print(f"seed {seed} {kind:8s} {cosine:.6f}")


if __name__ == "__main__":
    main()
