"""`falcon-tf demo` (`make demo`): the embedded preset through every runtime, on one screen.

Builds the preset with XLA, writes it back as a Keras preset, exports it for
TF Serving and as every TFLite variant of the backbone and the causal LM,
loads each back and prints parity, speed and greedy text side by side.
"""

import os
import time

from converters.cli import DEFAULT_PRESET, tflite_table
from falcon_tf.artifacts import contract

DEMO_PROMPT = "The falcon flew over"


def demo(preset=DEFAULT_PRESET, out_dir="artifacts", batch=1, seq=128, runs=20,
         prompt=DEMO_PROMPT, new_tokens=24):
    """Builds a preset, writes it to `out_dir/<preset>/keras_preset`, reloads it,
    exports it for TF Serving and every TFLite variant and loads those back.
    Returns the lines to print: Keras (XLA-vs-eager and reload parity, XLA
    latency), SavedModel parity, a TFLite backbone table (size, parity, whether
    the GPU accelerator runs the whole graph, CPU latency), then the causal LM
    on every runtime: greedy text from `prompt`, whether it equals Keras's,
    tokens/s, file size and perplexity on the preset's held-out ids."""
    import numpy as np

    from falcon_tf import FalconBackbone

    from falcon_tf.runtime import evaluation
    from falcon_tf.checkpoints.handles import artifact_name

    model = FalconBackbone.from_preset(preset)
    name = artifact_name(preset)
    preset_dir = os.path.join(out_dir, name, "keras_preset")
    calibration = evaluation.preset_token_ids(preset, evaluation.CALIBRATION_FILE)

    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, model.vocabulary_size, (batch, seq)).astype("int32"),
         "padding_mask": np.ones((batch, seq), "int32")}
    eager = model(x).numpy()
    xla = model.compiled_call(x).numpy()  # compiles once
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.compiled_call(x).numpy()
        times.append(time.perf_counter() - start)
    model_line = (f"{name}: {model.count_params():,} parameters, {model.num_layers} layers. "
                  f"XLA vs eager max|diff| {np.abs(xla - eager).max():.2e}, XLA forward "
                  f"{np.median(times) * 1e3:.2f} ms (median of {runs}, batch {batch} x seq {seq})")

    # The Keras preset, TF Serving export and every TFLite backbone variant,
    # each loaded back and compared with Keras.
    from converters.export_saved_model import export_saved_model
    from converters.export_tflite import export_tflite
    from falcon_tf.lite import FalconBackbone as LiteBackbone
    from falcon_tf.serving import FalconBackbone as ServingBackbone

    lm = _demo_causal_lm(preset, model)
    lm.save_to_preset(preset_dir)
    reload_diff = np.abs(FalconBackbone.from_preset(preset_dir).compiled_call(x).numpy()
                         - xla).max()
    version_dir, _ = export_saved_model(name, out_dir, name=name, model=model,
                                        tokenizer=lm.tokenizer)
    diffs = []
    for signature in (contract.BACKBONE_SIGNATURE, "serving_xla"):
        served = ServingBackbone.from_preset(os.path.join(out_dir, name), signature=signature)
        diffs.append(f"{signature} {np.abs(served(x) - eager).max():.2e}")
    export_line = (f"exports vs Keras, max|diff|: reloaded {preset_dir} {reload_diff:.2e}; "
                   f"SavedModel {_shown_path(version_dir)} {', '.join(diffs)}")
    entries = export_tflite(name, out_dir, name=name, model=model, batch=batch, seq=seq,
                            calibration=calibration)
    latencies = {}
    for variant in entries:
        lite = LiteBackbone.from_preset(os.path.join(out_dir, name), variant=variant,
                                        num_threads=2)
        lite(x)
        runs_ms = []
        for _ in range(runs):
            start = time.perf_counter()
            lite(x)
            runs_ms.append((time.perf_counter() - start) * 1e3)
        latencies[variant] = float(np.median(runs_ms))
    lines = [model_line, export_line,
             f"TFLite backbone (batch {batch} x seq {seq}; CPU ms = XNNPACK, 2 threads, "
             f"median of {runs}; cosine vs Keras)", tflite_table(entries, latencies), ""]
    return "\n".join(lines + causal_lm_demo(preset, out_dir, name, lm, prompt, new_tokens,
                                            calibration))


def _shown_path(path):
    """`path` relative to the working directory when it lies inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _demo_causal_lm(preset, backbone, cache_length=128):
    from falcon_tf import FalconCausalLM, FalconTokenizer

    try:
        tokenizer = FalconTokenizer.from_preset(preset)
    except FileNotFoundError:
        tokenizer = None
    return FalconCausalLM(backbone, tokenizer=tokenizer, cache_length=cache_length)


def causal_lm_demo(preset, out_dir, name, lm, prompt=DEMO_PROMPT, new_tokens=24,
                   calibration=None, variants=("fp32", "fp16", "int8", "int4")):
    """Exports the causal LM for TFLite (the SavedModel already holds it) and
    runs it on every runtime: greedy text from `prompt` (tokens/s over the
    median of 5 generate calls), file size, and perplexity on the preset's
    held-out ids against Keras's. Returns the lines."""
    import numpy as np

    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf.runtime import evaluation
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.serving import FalconCausalLM as ServingLM

    artifact = os.path.join(out_dir, name)
    window = min(evaluation.DEFAULT_WINDOW, lm.cache_length)
    entries = export_tflite_causal_lm(preset, out_dir, name, model=lm.backbone,
                                      variants=variants, cache_length=lm.cache_length,
                                      prefill_lengths=(8, 32, 64), tokenizer=lm.tokenizer,
                                      calibration=calibration)
    served = ServingLM.from_preset(artifact, cache_length=lm.cache_length)
    saved_model_bytes = sum(os.path.getsize(os.path.join(root, f))
                            for root, _, files in os.walk(served.path) for f in files)
    runtimes = {"keras XLA": (lm, evaluation.keras_scorer(lm), None),
                "saved_model": (served, evaluation.saved_model_scorer(served), saved_model_bytes)}
    for variant, entry in entries.items():
        lite = LiteLM.from_preset(artifact, variant=variant, num_threads=2)
        runtimes[f"tflite {variant}"] = (lite, evaluation.tflite_scorer(lite), entry["bytes"])
    heldout = evaluation.preset_token_ids(preset)
    text_input = prompt if lm.tokenizer is not None else [[1] + list(range(2, 14))]
    max_length = (len(lm.tokenizer(prompt)) + 1 if lm.tokenizer else 13) + new_tokens

    def run(runtime):
        return runtime.generate(text_input, max_length=max_length, stop_token_ids=None,
                                strip_prompt=True)

    expected = run(lm)
    rows, texts, keras_ppl = [], [], None
    for label, (runtime, scorer, size) in runtimes.items():
        got = run(runtime)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run(runtime)
            times.append(time.perf_counter() - start)
        ppl, delta = "-", "-"
        if heldout is not None:
            value = evaluation.perplexity(scorer, heldout, window)["perplexity"]
            keras_ppl = value if keras_ppl is None else keras_ppl
            ppl = f"{value:.3f}"
            delta = "" if runtime is lm else f"{(value / keras_ppl - 1) * 100:+.3f}%"
        variant = label.split()[1] if label.startswith("tflite") else None
        gpu = {True: "yes", False: "no", None: "n/a"}[
            entries[variant].get("gpu_fully_accelerated")] if variant else ""
        rows.append(f"{label:12s} {'' if size is None else f'{size:,d}':>11s} {ppl:>10s} "
                    f"{delta:>9s} {'yes' if got == expected else 'NO':>10s} "
                    f"{new_tokens / np.median(times):9.1f} {gpu:>9s}")
        texts.append(f"{label:12s} | {got[0] if isinstance(got, list) else got}")
    heldout_note = (f"perplexity on {evaluation.perplexity_tokens(heldout, window):,} held-out "
                    f"tokens, window {window}" if heldout is not None
                    else "no held-out ids shipped: no perplexity")
    return [f"{name}: causal LM, greedy, {new_tokens} new tokens after the prompt "
            f"{prompt!r}; tokens/s = new tokens / median of 5 generate calls, CPU; "
            f"{heldout_note}; int8/int4 GPTQ-rounded on "
            f"{'training text' if calibration is not None else 'random ids'}",
            f"{'runtime':12s} {'bytes':>11s} {'perplexity':>10s} {'Δ vs keras':>9s} "
            f"{'same text':>10s} {'tokens/s':>9s} {'GPU whole':>9s}",
            *rows, "", f"prompt       | {prompt}", *texts]
