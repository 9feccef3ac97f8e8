"""What candidate int4 schemes of the causal LM cost in logits, and what they save in bytes.

Each scheme is a set of ai-edge-quantizer rules for the causal LM's int4 file
(as `converters.export_tflite.CAUSAL_LM_RECIPES["int4"]`): which projections
take int4 and in which blocks. For each, the causal LM is exported at the
TFLite tests' shape (vocabulary 2048, hidden 128, 2 layers, cache 64, prefill 8
and 32) on trained-like weights (tests/trained_like.py, seeds 0, 1, 2), GPTQ-
rounded as the export rounds, and its logits over a prefill and 8 decode steps
are compared with Keras (the export's own parity: the tests' number). Printed
per scheme: the cosine for each seed, and the bytes of the weights at
falcon_refinedweb_1b_en's shape (hidden 2048, 24 layers, MLP 8192, vocabulary
50304): integers at their width, blockwise scales at 2 bytes, against the
current scheme's. The file adds about 20 MB of graph to those (per signature
and layer, mostly the per-channel int8 weights' quantization parameters).

    python benchmarks/int4_schemes.py                       # every scheme below
    python benchmarks/int4_schemes.py current mlp64 --references 10
    python benchmarks/int4_schemes.py current --smooth 0.5  # with smoothing (below)
    python benchmarks/int4_schemes.py --table               # the tied table as int4
    python benchmarks/int4_schemes.py --preset falcon_tiny_trained  # on real trained weights

`--references K` also runs each file on K other prompts (seeds 100 ...) and
prints the mean and worst cosine. `--smooth ALPHA` first re-parameterises the
Keras model, exactly (its outputs do not change beyond float rounding), so
that the quantized projections see smaller activation outliers (activation-
aware smoothing): with s = mean|x|^ALPHA per input channel over the
calibration inputs (normalised to a geometric mean of max and min of 1), the
rows of the query/key/value and MLP-up kernels are multiplied by s and the
preceding LayerNorm's gain and offset divided by it; the rows of the
attention output projection are multiplied by s and the value columns (and
bias) of the query/key/value projection divided by it (each value channel
reaches the output only through the attention weights, which sum to 1).
`--table` exports the current scheme with the tied embedding/LM-head table
rounded as int4 would store it (symmetric, per row or per block of 32; the
file itself keeps int8 rows, whose grid holds those values to within 1/254 of
a row's range), and compares with the unrounded model's Keras logits.
`--preset NAME` measures each scheme on a preset's real trained weights
instead: its causal LM's int4 file, GPTQ-rounded on the preset's calibration
ids, scores the preset's held-out ids (perplexity, windows of 128) and
continues 10 held-out prompts greedily; printed against Keras's.
"""

import argparse
import contextlib
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

import numpy as np  # noqa: E402

FULL = dict(vocabulary_size=50304, num_layers=24, hidden_dim=2048, intermediate_dim=8192)
SEEDS = (0, 1, 2)
CACHE, PREFILL = 64, (8, 32)
MLP = ".*transformer_layer_.*dense_(h_to_4h|4h_to_h).*"
OUT = ".*transformer_layer_.*output_dense.*"
QKV = ".*transformer_layer_.*query_key_value.*"


@contextlib.contextmanager
def int4_recipe(recipe):
    """The causal LM's int4 export uses `recipe` inside the block."""
    from converters import export_tflite

    own = export_tflite.CAUSAL_LM_RECIPES["int4"]
    export_tflite.CAUSAL_LM_RECIPES["int4"] = recipe
    try:
        yield
    finally:
        export_tflite.CAUSAL_LM_RECIPES["int4"] = own


def schemes():
    """{name: ai-edge-quantizer rules}; "current" is CAUSAL_LM_RECIPES["int4"]."""
    from converters.export_tflite import (CAUSAL_LM_RECIPES, _weight_rule as rule,
                                          causal_lm_recipes)

    return {
        "current": CAUSAL_LM_RECIPES["int4"],
        "mlp64": [rule(".*", 8), rule(MLP, 4, "BLOCKWISE_64")],
        "mlp128": [rule(".*", 8), rule(MLP, 4, "BLOCKWISE_128")],
        "out4": [rule(".*", 8), rule(MLP, 4, "BLOCKWISE_32"), rule(OUT, 4, "BLOCKWISE_32")],
        "out4+mlp64": [rule(".*", 8), rule(MLP, 4, "BLOCKWISE_64"),
                       rule(OUT, 4, "BLOCKWISE_32")],
        "out4+mlp128": [rule(".*", 8), rule(MLP, 4, "BLOCKWISE_128"),
                        rule(OUT, 4, "BLOCKWISE_32")],
        "qkv4": [rule(".*", 8), rule(MLP, 4, "BLOCKWISE_32"), rule(QKV, 4, "BLOCKWISE_32")],
        "qkv4+out4": causal_lm_recipes("all")["int4"],  # int4_projections="all"
    }


def full_size_weight_bytes(recipe):
    """Stored bytes of the projections and the tied table at FULL's shape under
    `recipe` (int8 per channel: 1 byte a weight; int4 blocks: half a byte a
    weight and 2 bytes a block's scale); the table is int8 rows, stored once."""
    from converters import gptq

    h, m, layers = FULL["hidden_dim"], FULL["intermediate_dim"], FULL["num_layers"]
    kernels = {"attention/query_key_value/kernel": (h, 3 * h),
               "attention/output_dense/kernel": (h, h),
               "dense_h_to_4h/kernel": (h, m), "dense_4h_to_h/kernel": (m, h)}
    total = FULL["vocabulary_size"] * h
    for name, (fan_in, fan_out) in kernels.items():
        bits, block = gptq.weight_scheme(recipe, f"transformer_layer_0/{name}")
        weights = fan_in * fan_out
        total += layers * (weights * bits // 8 + (2 * weights // block if block else 0))
    return total


def smooth(model, alpha, calibration):
    """Re-parameterises `model` (a FalconBackbone with sequential attention and
    MLP) in place as the module docstring describes; returns it."""
    if model.falcon_config.parallel_attention:
        raise ValueError("Smoothing folds each scale into the LayerNorm before one "
                         "projection; parallel attention shares it between two.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must lie in [0, 1]; received {alpha}.")
    blocks = model.transformer_layers
    dense = [d for b in blocks for d in (b.attention.query_key_value, b.dense_h_to_4h,
                                        b.attention.output_dense)]
    magnitude = {d: 0.0 for d in dense}

    def recorder(layer, call):
        def record(inputs, *args, **kwargs):
            x = np.abs(np.asarray(inputs, np.float32)).reshape(-1, inputs.shape[-1])
            magnitude[layer] = magnitude[layer] + x.sum(axis=0)
            return call(inputs, *args, **kwargs)
        return record

    for layer in dense:
        object.__setattr__(layer, "call", recorder(layer, layer.call))
    try:
        for row in calibration:
            model({"token_ids": row[None].astype("int32"),
                   "padding_mask": np.ones((1, row.size), "int32")}, training=False)
    finally:
        for layer in dense:
            object.__delattr__(layer, "call")

    def scales(m):
        s = np.maximum(m, 1e-8) ** alpha
        return (s / np.sqrt(s.max() * s.min())).astype(np.float32)

    for block in blocks:
        attention = block.attention
        for norm, layer in ((block.input_layernorm, attention.query_key_value),
                            (block.post_attention_layernorm, block.dense_h_to_4h)):
            s = scales(magnitude[layer])
            norm.gamma.assign(norm.gamma.numpy() / s)
            norm.beta.assign(norm.beta.numpy() / s)
            layer.kernel.assign(layer.kernel.numpy() * s[:, None])
        n, kv, d = attention.num_heads, attention.num_kv_heads, attention.head_dim
        # Query heads sharing a value head share its scales: one per (value head, channel).
        per_head = magnitude[attention.output_dense].reshape(kv, n // kv, d).sum(axis=1)
        s = scales(per_head.ravel())  # (kv d,), value columns' order
        out = attention.output_dense
        out.kernel.assign(out.kernel.numpy()
                          * np.repeat(s.reshape(kv, 1, d), n // kv, axis=1).reshape(-1, 1))
        qkv = attention.query_key_value
        kernel = qkv.kernel.numpy()
        kernel[:, (n + kv) * d:] /= s
        qkv.kernel.assign(kernel)
        if qkv.bias is not None:
            bias = qkv.bias.numpy()
            bias[(n + kv) * d:] /= s
            qkv.bias.assign(bias)
    return model


def int4_rows(table, block):
    """`table` rounded symmetrically onto 15 int4 levels, one scale per row
    (`block` None) or per block of `block` columns."""
    rows, width = table.shape
    groups = table.reshape(rows, -1, block or width)
    scale = np.abs(groups).max(axis=-1, keepdims=True) / 7
    scale[scale == 0] = 1.0
    return (np.clip(np.round(groups / scale), -7, 7) * scale).reshape(rows, width)


def measure(name, recipe, seed, smooth_alpha=None, table_block=False, references=0):
    """(cosine on the export's own parity prompt, [cosines on `references` others])."""
    from falcon_tf import FalconBackbone
    from falcon_tf.model.causal_lm import FalconCausalLM
    from trained_like import SHAPE, trained_like

    from converters import export_tflite_causal_lm, export_tflite_large, gptq

    model = trained_like(FalconBackbone(**SHAPE), seed=seed)
    if smooth_alpha is not None:
        smooth(model, smooth_alpha, gptq.default_calibration(model.vocabulary_size))
    lm = FalconCausalLM(model, cache_length=CACHE)
    prompts = [export_tflite_large.keras_reference(lm, CACHE, PREFILL, seed=100 + i)
               for i in range(references)]
    main = export_tflite_causal_lm.keras_reference(lm, CACHE, PREFILL)
    if table_block is not False:
        table = model.token_embedding.embeddings
        table.assign(int4_rows(table.numpy(), table_block))
    with int4_recipe(recipe), tempfile.TemporaryDirectory() as out:
        entries = export_tflite_causal_lm.export_tflite_causal_lm(
            "q", out, model=model, variants=("int4",), cache_length=CACHE,
            prefill_lengths=PREFILL)
        with open(os.path.join(out, "q", entries["int4"]["file"]), "rb") as f:
            data = f.read()
    cosine = export_tflite_causal_lm.step_parity(data, main)["cosine_vs_keras"]
    others = [export_tflite_causal_lm.step_parity(data, r)["cosine_vs_keras"] for r in prompts]
    return cosine, others


def measure_preset(names, all_schemes, preset, base):
    """Prints each scheme's held-out perplexity and greedy agreement on `preset`."""
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf import FalconCausalLM
    from falcon_tf.runtime import evaluation

    window = evaluation.DEFAULT_WINDOW
    lm = FalconCausalLM.from_preset(preset, cache_length=window)
    heldout = evaluation.preset_token_ids(preset)
    calibration = evaluation.preset_token_ids(preset, evaluation.CALIBRATION_FILE)
    if heldout is None or calibration is None:
        raise SystemExit(f"{preset} ships no held-out or calibration ids.")
    prompts = evaluation.heldout_prompts(heldout, lm.tokenizer.start_token_id)
    expected = evaluation.greedy_continuations(lm, prompts)
    keras = evaluation.perplexity(evaluation.keras_scorer(lm), heldout, window)["perplexity"]
    print(f"{preset}: Keras perplexity {keras:.4f} on "
          f"{evaluation.perplexity_tokens(heldout, window):,} held-out tokens (windows of "
          f"{window}); int4 files GPTQ-rounded on its calibration ids", flush=True)
    for name in names:
        with int4_recipe(all_schemes[name]), tempfile.TemporaryDirectory() as out:
            entries = export_tflite_causal_lm(
                preset, out, "q", model=lm.backbone, variants=("int4",),
                cache_length=window, prefill_lengths=(8, 32, 64), tokenizer=lm.tokenizer,
                calibration=calibration)
            lite, scorer = evaluation.load_runtime(os.path.join(out, "q"), "tflite", "int4")
            ppl = evaluation.perplexity(scorer, heldout, window)["perplexity"]
            same = evaluation.agreement(expected, evaluation.greedy_continuations(
                lite, prompts))
        weights = full_size_weight_bytes(all_schemes[name])
        print(f"{name}: file {entries['int4']['bytes']:,} B, perplexity {ppl:.4f} "
              f"({(ppl / keras - 1) * 100:+.3f}% vs Keras), greedy continuations equal "
              f"Keras's {round(same * len(prompts))}/{len(prompts)}; weights at full size "
              f"{weights:,} B ({weights - base:+,} B)", flush=True)


def main():
    all_schemes = schemes()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("schemes", nargs="*", help=f"of: {', '.join(all_schemes)} (all)")
    parser.add_argument("--smooth", type=float, default=None, metavar="ALPHA")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--references", type=int, default=0)
    parser.add_argument("--preset", default=None)
    args = parser.parse_args()
    unknown = [s for s in args.schemes if s not in all_schemes]
    if unknown:
        parser.error(f"unknown scheme(s) {', '.join(unknown)}; known: {', '.join(all_schemes)}")
    names = args.schemes or list(all_schemes)
    base = full_size_weight_bytes(all_schemes["current"])
    if args.preset:
        return measure_preset(names, all_schemes, args.preset, base)
    runs = [(n, False) for n in names]
    if args.table:
        runs = [("current", None), ("current", 32)]
    for name, table_block in runs:
        results = [measure(name, all_schemes[name], seed, args.smooth, table_block,
                           args.references) for seed in SEEDS]
        label = name + ("" if table_block is False else
                        f", table int4 {'per row' if table_block is None else 'blocks of 32'}")
        if args.smooth is not None:
            label += f", smoothed (alpha {args.smooth})"
        saved = "" if table_block is not False else \
            f"  weights {full_size_weight_bytes(all_schemes[name]):,} B " \
            f"({full_size_weight_bytes(all_schemes[name]) - base:+,} B)"
        print(f"{label}: " + " / ".join(f"{c:.5f}" for c, _ in results) + saved, flush=True)
        if args.references:
            print("  other prompts, mean / worst per seed: " + "; ".join(
                f"{np.mean(o):.5f} / {np.min(o):.5f}" for _, o in results), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
