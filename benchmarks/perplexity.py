"""Perplexity of every runtime and quantized variant against Keras, on real text.

    python benchmarks/perplexity.py [--preset falcon_tiny_trained]

Exports the preset's causal LM (into a temporary directory) as a SavedModel and
as every TFLite variant; int8 and int4 twice: GPTQ-rounded on the preset's
calibration ids (training text) and rounded to nearest. Each runtime then
scores the preset's held-out ids (windows of 128 tokens from an empty cache)
and continues 10 held-out prompts greedily; the table gives perplexity, its
change against Keras (float32, XLA), and how many continuations equal Keras's.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from converters.cli import load_litert, load_tensorflow, quiet_third_party_logs  # noqa: E402

# Largest perplexity change against Keras that each variant is held to.
TARGETS = {"fp16": 0.001, "int8": 0.01, "int4": 0.05}
VARIANTS = ("fp32", "fp16", "int8", "int4")
CACHE = 128
PROMPT_LENGTH, NEW_TOKENS, PROMPTS = 16, 32, 10


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="falcon_tiny_trained")
    args = parser.parse_args(argv)
    quiet_third_party_logs()
    load_tensorflow()
    load_litert()

    from converters.export_saved_model import export_saved_model
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf import FalconCausalLM
    from falcon_tf.runtime import evaluation

    lm = FalconCausalLM.from_preset(args.preset, cache_length=CACHE)
    heldout = evaluation.preset_token_ids(args.preset)
    calibration = evaluation.preset_token_ids(args.preset, evaluation.CALIBRATION_FILE)
    if heldout is None or calibration is None:
        raise SystemExit(f"{args.preset} ships no held-out or calibration ids.")
    prompts = evaluation.heldout_prompts(heldout, lm.tokenizer.start_token_id, PROMPTS,
                                         PROMPT_LENGTH)
    window = evaluation.DEFAULT_WINDOW
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        export_saved_model(args.preset, out, name="model", model=lm.backbone,
                           tokenizer=lm.tokenizer)
        files = {}
        for rounding, variants in (("gptq", VARIANTS), ("nearest", ("int8", "int4"))):
            name = f"causal_lm_{rounding}"
            entries = export_tflite_causal_lm(
                args.preset, out, name, model=lm.backbone, variants=variants,
                cache_length=CACHE, prefill_lengths=(8, 32, 64), tokenizer=lm.tokenizer,
                rounding=rounding, calibration=calibration)
            for variant, entry in entries.items():
                label = variant + (f", {rounding}" if variant in ("int8", "int4") else "")
                files[label] = (os.path.join(out, name), variant, entry["bytes"])
        export_seconds = time.perf_counter() - start

        contenders = {"keras (float32, XLA)": (lm, evaluation.keras_scorer(lm), None, None)}
        served, scorer = evaluation.load_runtime(os.path.join(out, "model"), "saved_model")
        contenders["saved_model"] = (served, scorer, None, None)
        for label, (artifact, variant, size) in files.items():
            lite, scorer = evaluation.load_runtime(artifact, "tflite", variant)
            contenders[f"tflite {label}"] = (lite, scorer, size, variant)

        expected = evaluation.greedy_continuations(lm, prompts, NEW_TOKENS)
        print(f"{args.preset}: perplexity on {evaluation.perplexity_tokens(heldout, window):,} "
              f"held-out tokens (windows of {window}); greedy continuations of {PROMPTS} "
              f"held-out prompts ({PROMPT_LENGTH} tokens + {NEW_TOKENS}) compared with Keras's; "
              f"exports took {export_seconds:.0f} s")
        print(f"| {'runtime':24s} | {'bytes':>9s} | {'perplexity':>10s} | {'Δ vs Keras':>10s} | "
              f"{'target':>12s} | {'greedy = Keras':>14s} |")
        print(f"|{'-' * 26}|{'-' * 10}:|{'-' * 11}:|{'-' * 11}:|{'-' * 13}:|{'-' * 15}:|")
        keras_ppl = None
        for label, (runtime, scorer, size, variant) in contenders.items():
            ppl = evaluation.perplexity(scorer, heldout, window)["perplexity"]
            keras_ppl = ppl if keras_ppl is None else keras_ppl
            got = expected if runtime is lm else evaluation.greedy_continuations(
                runtime, prompts, NEW_TOKENS)
            same = round(evaluation.agreement(expected, got) * PROMPTS)
            delta = ppl / keras_ppl - 1
            target = TARGETS.get(variant)
            target = "" if target is None else (
                f"≤ {target * 100:g}% " + ("met" if abs(delta) <= target else "MISSED"))
            size = "" if size is None else f"{size:,d}"
            print(f"| {label:24s} | {size:>9s} | {ppl:10.4f} | {delta * 100:+9.3f}% | "
                  f"{target:>12s} | {f'{same}/{PROMPTS}':>14s} |")


if __name__ == "__main__":
    main()
