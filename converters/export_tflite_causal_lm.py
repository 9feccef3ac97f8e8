"""Preset -> the causal LM as TFLite files with prefill and decode signatures.

    falcon-tf export --preset falcon_tiny_random --format tflite --task causal_lm

writes `artifacts/<name>/tflite/<name>_causal_lm_<variant>.tflite`, one file per
variant holding every signature of the on-device LLM convention
(ai-edge-torch / LiteRT-LM), batch 1, static shapes: prefill_<L> for each L
in `prefill_lengths` (the caches only: no LM head, and the last block stops
at its keys and values), decode, decode_<W> for each W in `decode_windows`,
and windowed_prefill_<L>_<W> for each W in `prefill_windows` and L <= W (a
prompt's first chunks attend W slots, not the whole cache), their tensors as
`falcon_tf.artifacts.contract` describes and builds them.

The cache is updated in place: DYNAMIC_UPDATE_SLICE writes the new keys and
values to the slots input_pos[0] .. input_pos[0] + L - 1 and touches no other
slot (`slot_write`), on the CPU and on the GPU accelerator alike. A chunk's
tokens take contiguous slots from its first position (LiteRT-LM pads unused
rows with input_pos 0, which must not overwrite slot 0), and a chunk must fit
the cache: input_pos[0] + L <= cache_length. The files and their parity go
into the manifest's `causal_lm` entry; the tokenizer goes to tokenizer/.

Variants (converters/export_tflite.py CAUSAL_LM_RECIPES): fp32; fp16 weights
of the decoder projections; int8 and int4 compute with integers: every
FULLY_CONNECTED, the tied LM head included (the embedding table, one scale per
row), takes int8 weights straight in (int4 for the MLP of int4), XNNPACK
quantizing the activations at run time; the lookup GATHERs rows of an int8
copy of the table. The projections of int8 and int4 are GPTQ-rounded.
"""

import os

import numpy as np

from converters import export_tflite, export_tflite_large, flatbuffer_stitch
from converters.export_tokenizer import export_tokenizer
from converters.stages import input_specs, stamp
from falcon_tf.artifacts import contract, manifest
from falcon_tf.progress import progress_bar

DEFAULT_CACHE_LENGTH = contract.DEVICE_CACHE_LENGTH
DEFAULT_PREFILL_LENGTHS = (8, 32)


def slot_write(input_pos, cache_length):
    """A cache writer: the L new rows go to the contiguous slots input_pos[0] ..
    input_pos[0] + L - 1 (axis 2 of a (1, kv_heads, C, head_dim) cache; the
    new rows arrive as (1, kv_heads, L, head_dim)), written in place by one
    DYNAMIC_UPDATE_SLICE at [0, 0, input_pos[0], 0]; the rest of the cache is
    neither read nor written, so a write costs the same at every cache
    capacity, and the GPU accelerator runs it.

    Only the first position is read: LiteRT-LM's runtime sets `input_pos` to 0
    for the unused rows of a prefill chunk, and those rows must not land in
    slot 0. Written past the prompt, they sit in slots that decode overwrites
    before any token attends them.

    A chunk must fit the cache: input_pos[0] + L <= cache_length
    (DYNAMIC_UPDATE_SLICE would clamp its start and shift the rows over
    earlier ones). Every host keeps to that: `falcon_tf.lite` and the Android
    core choose prefill chunks that fit and decode a tail that none fits, and
    LiteRT-LM's Engine runs only prefill signatures no longer than the cache
    entries left. Reading the cache's own rows back under a clamped chunk
    cost 5 ops per cache, 14 % of an int8 prefill at the generation
    benchmark's shape.
    """
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.python import xla

    length = input_pos.shape[0]
    if length > cache_length:
        raise ValueError(f"A chunk of {length} tokens does not fit a cache of {cache_length}.")
    zero = tf.zeros((1,), tf.int32)
    begin = tf.concat([zero, zero, input_pos[:1], zero], axis=0)
    return lambda cache, new: xla.dynamic_update_slice(cache, tf.cast(new, cache.dtype), begin)


def default_decode_windows(cache_length):
    """Powers of two from 128 below `cache_length`: the decode_<W> signatures."""
    windows, window = [], 128
    while window < cache_length:
        windows.append(window)
        window *= 2
    return windows


def default_prefill_windows(decode_windows):
    """The smallest decode window, if any: the windowed_prefill_<L>_<W>
    signatures serve a prompt's first W tokens (a chat's first turn), one
    signature per prefill length; more windows would add a signature per
    prefill length each."""
    return sorted(decode_windows)[:1]


def check_windows(windows, cache_length, argument):
    """`windows` sorted and deduplicated; ValueError naming `argument` unless
    each is an integer in [1, cache_length)."""
    windows = sorted(set(windows))
    if any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < cache_length
           for n in windows):
        raise ValueError(f"`{argument}` must be integers in [1, cache_length="
                         f"{cache_length}); received {windows}.")
    return windows


def cache_writer(input_pos, cache_length):
    """How every exported graph, whole or in pieces, writes a step's keys and
    values into a cache."""
    return slot_write(input_pos, cache_length)


def signature_functions(lm, cache_length, prefill_lengths, embed=None, decode_windows=(),
                        project=None, prefill_windows=()):
    """{signature name: tf.function} for prefill_<L>, decode, decode_<W> for
    W in `decode_windows` and windowed_prefill_<L>_<W> for W in
    `prefill_windows` and L <= W.

    `embed`: None (the backbone's float table), or a lookup token_ids ->
    embedded rows (`export_tflite.int8_embedding_lookup`: rows GATHERed as
    int8, CAST and scaled, so the lookup reads a quarter of the bytes and the
    float table is left to the LM head alone). `project`: the LM head's
    projection (`export_tflite.split_table`), None for the tied embedding's.
    """
    import tensorflow as tf

    config = lm.backbone.falcon_config
    names = contract.cache_names(config.num_layers)

    def make(length, window=None, logits=True):
        signature = contract.causal_lm_signature(length, cache_length, config.num_layers,
                                                 config.kv_heads, config.head_dim,
                                                 config.vocabulary_size, logits)

        @tf.function(input_signature=input_specs(signature))
        def step(tokens, input_pos, mask, *caches):
            write = cache_writer(input_pos, cache_length)
            if logits:
                out, caches = lm.call_with_cache(
                    tokens, input_pos[None, :], mask, list(caches), write=write, embed=embed,
                    window=window, project=project)
                out = {contract.LOGITS: out}
            else:  # the converter drops what only the hidden states need
                _, caches = lm.backbone.forward_cached(
                    tokens, input_pos[None, :], mask, list(caches), write, embed, window)
                out = {}
            out.update({n: tf.cast(c, tf.float32) for n, c in zip(names, caches)})
            return out

        return step

    functions = {contract.prefill_signature(n): make(n, logits=False) for n in prefill_lengths}
    functions[contract.DECODE_SIGNATURE] = make(1)
    for window in decode_windows:
        functions[contract.decode_window_signature(window)] = make(1, window)
    for length, window in contract.windowed_prefills(prefill_lengths, prefill_windows):
        functions[contract.windowed_prefill_signature(length, window)] = make(
            length, window, logits=False)
    return functions


def keras_reference(lm, cache_length, prefill_lengths, seed=0):
    """What every variant's file is compared with: a prompt longer than the
    longest prefill, its greedy continuation, and the uncached Keras forward's
    logits at every position. Returns (prompt length, sequence, logits)."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, lm.backbone.vocabulary_size, max(prefill_lengths) + 3).tolist()
    new = min(8, cache_length - len(prompt))
    sequence = lm.generate([prompt], max_length=len(prompt) + new, stop_token_ids=None)[0]
    logits = lm({"token_ids": np.array([sequence], "int32"),
                 "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()[0]
    return len(prompt), sequence, logits


def step_parity(data, reference):
    """Runs the file on the CPU interpreter through `falcon_tf.lite`'s own host
    loop pieces: prefill the reference's prompt but its last token, decode
    from that token through the greedy continuation, and compare every decode
    step's logits with the Keras ones (`runs_parity`)."""
    from ai_edge_litert.interpreter import Interpreter

    from falcon_tf.lite.causal_lm import SignatureRunners, run_steps_both_ways

    prompt_length, sequence, _ = reference
    runners = SignatureRunners(Interpreter(model_content=data))
    return runs_parity(run_steps_both_ways(runners, sequence, prompt_length), reference)


def runs_parity(runs, reference):
    """The parity entry of `runs` (`run_steps_both_ways`: the host loop on the
    windowed signatures it takes, then on prefill_<L> and decode alone, as
    LiteRT-LM and hosts past the windows run them): the worse of the two."""
    parities = [logit_parity(got, reference) for got in runs]
    return {"max_abs_diff_vs_keras": max(p["max_abs_diff_vs_keras"] for p in parities),
            "cosine_vs_keras": min(p["cosine_vs_keras"] for p in parities),
            "greedy_tokens_equal_keras": all(p["greedy_tokens_equal_keras"] for p in parities),
            "of": "logits"}


def logit_parity(got, reference):
    """The parity entry of a file's step logits `got` (`run_steps`: positions
    prompt_length - 1 onwards, vocab) against the Keras reference
    (`keras_reference`)."""
    prompt_length, sequence, expected = reference
    a = got.ravel()
    b = expected[prompt_length - 1:prompt_length - 1 + len(got)].ravel()
    greedy = [int(t) for t in got[:-1].argmax(axis=-1)] == sequence[prompt_length:]
    return {"max_abs_diff_vs_keras": float(np.abs(a - b).max()),
            "cosine_vs_keras": float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)),
            "greedy_tokens_equal_keras": bool(greedy), "of": "logits"}


def export_tflite_causal_lm(preset, out_dir="artifacts", name=None, model=None,
                            variants=("fp32", "fp16", "int8"),
                            cache_length=DEFAULT_CACHE_LENGTH,
                            prefill_lengths=DEFAULT_PREFILL_LENGTHS, tokenizer=None,
                            rounding="gptq", calibration=None, decode_windows=None,
                            prefill_windows=None, int4_projections="mlp"):
    """Exports the causal LM of `preset` (or of `model`, a FalconBackbone) and
    its tokenizer. `rounding` and `calibration`: how int8 and int4 round their
    projection weights, as for the backbone (`export_tflite.convert`).
    `decode_windows`: the W of the decode_<W> signatures, each in [1,
    cache_length) (None: `default_decode_windows`). `prefill_windows`: the W
    of the windowed_prefill_<L>_<W> signatures, each in [1, cache_length)
    (None: `default_prefill_windows`). `int4_projections`: "mlp" (the int4
    file's attention projections int8) or "all" (every projection int4;
    `export_tflite.causal_lm_recipes`).
    Returns {variant: manifest entry}."""
    import tensorflow as tf

    from falcon_tf.model.causal_lm import FalconCausalLM

    contract.check_variants(variants)
    recipes = export_tflite.causal_lm_recipes(int4_projections)
    if rounding not in export_tflite.ROUNDINGS:
        raise ValueError(f"`rounding` must be one of {', '.join(export_tflite.ROUNDINGS)}; "
                         f"received {rounding!r}.")
    contract.check_cache_length(cache_length)
    prefill_lengths = sorted(set(prefill_lengths))
    if not prefill_lengths or any(isinstance(n, bool) or not isinstance(n, int) or not
                                  1 <= n <= cache_length for n in prefill_lengths):
        raise ValueError(f"`prefill_lengths` must be integers in [1, cache_length="
                         f"{cache_length}]; received {prefill_lengths}.")
    decode_windows = check_windows(default_decode_windows(cache_length) if decode_windows is None
                                   else decode_windows, cache_length, "decode_windows")
    prefill_windows = check_windows(
        default_prefill_windows(decode_windows) if prefill_windows is None else prefill_windows,
        cache_length, "prefill_windows")
    model, name, large = export_tflite.model_to_export(preset, model, name, variants,
                                                       "export_tflite_causal_lm")
    lm = FalconCausalLM(model, cache_length=cache_length)
    config = model.falcon_config
    artifact_dir = os.path.abspath(os.path.join(out_dir, name))
    folder = os.path.join(artifact_dir, "tflite")
    os.makedirs(folder, exist_ok=True)

    def float_file(integer):
        """The float32 file; `integer`: with the int8/int4 variants' int8 lookup table."""
        module = tf.Module()
        embed = project = None
        blocks = export_tflite.table_blocks(model)
        if integer:
            embed = export_tflite.int8_embedding_lookup(model, module)
        elif blocks > 1:  # the float table, in GPU-sized blocks
            embed, project = export_tflite.split_table(model, module, blocks)
        functions = signature_functions(lm, cache_length, prefill_lengths, embed,
                                        decode_windows, project, prefill_windows)
        with export_tflite.signatures_converter(model, functions, module) as conv:
            return conv.convert()

    # Every file is written to a staged sibling and published with the manifest
    # at the end: an export that fails or is killed leaves the previous files
    # and manifest as they were.
    with manifest.Staging(artifact_dir) as staging:
        with progress_bar(f"Exporting TFLite causal LM {name}", unit="stage") as progress:
            float_models, converted = {}, {}  # float files / pieces kept for every variant
            reference = (export_tflite_large.keras_reference if large else keras_reference)(
                lm, cache_length, prefill_lengths)
            progress(1, len(variants) + 1)
            entries = {}
            for done, variant in enumerate(variants):
                final = os.path.join(folder, f"{name}_causal_lm_{variant}.tflite")
                path = staging.path(final)
                integer = variant in ("int8", "int4")
                if large:
                    pieces = export_tflite_large.causal_lm_pieces(
                        lm, cache_length, prefill_lengths, decode_windows, integer,
                        prefill_windows)
                    export_tflite_large.write_pieces(
                        *pieces, variant, path, rounding, calibration, model,
                        f"{variant}: converting pieces", recipes, converted)
                    del pieces
                    prompt_length, sequence, _ = reference
                    parity = runs_parity(export_tflite_large.run_file(
                        "causal_lm", path, {"sequence": np.array(sequence, np.int32),
                                            "prompt_length": np.array(prompt_length)}), reference)
                    versions = export_tflite_large.op_versions_of_file(path)
                elif integer and rounding == "gptq":
                    from converters import gptq

                    calibration = (gptq.default_calibration(config.vocabulary_size)
                                   if calibration is None else calibration)
                    kernels = gptq.rounded_kernels(model, recipes[variant], calibration)
                    if integer not in float_models:
                        float_models[integer] = float_file(integer)
                    data = export_tflite.quantize(export_tflite.with_kernels(
                        float_models[integer], kernels, lambda: float_file(True)), variant, recipes)
                else:
                    if integer not in float_models:
                        float_models[integer] = float_file(integer)
                    data = export_tflite.quantize(float_models[integer], variant, recipes)
                if not large:
                    if integer:  # the lookup's int8 rows are the head's int8 weight
                        flatbuffer_stitch.write_stored_once(data, path)
                        with open(path, "rb") as f:
                            data = f.read()
                    else:
                        manifest.atomic_write(path, data)
                    versions = export_tflite.op_versions(data)
                    parity = step_parity(data, reference)
                entries[variant] = {
                    "file": os.path.relpath(final, artifact_dir),
                    "bytes": os.path.getsize(path),
                    "sha256": manifest.sha256(path),
                    "route": "pieces" if large else "whole",
                    "parity": parity,
                    "op_versions": versions,
                    "oldest_runtime": export_tflite.oldest_runtime(versions),
                    **({"int4_projections": int4_projections} if variant == "int4" else {}),
                    **stamp("tensorflow"),
                }
                progress(done + 2, len(variants) + 1)
        for entry in entries.values():
            entry["gpu_fully_accelerated"] = export_tflite.gpu_fully_accelerated(
                staging.moves[os.path.join(artifact_dir, entry["file"])])

        tokenizer_entry = export_tokenizer(preset, artifact_dir, tokenizer)
        causal_lm = {
            "cache_len": cache_length,
            "prefill_lengths": prefill_lengths,
            "decode_windows": decode_windows,
            "prefill_windows": prefill_windows,
            "num_layers": config.num_layers,
            "kv_heads": config.kv_heads,
            "head_dim": config.head_dim,
            "vocabulary_size": config.vocabulary_size,
            "mask_value": contract.MASK_VALUE,
            "start_token_id": tokenizer_entry["start_token_id"] if tokenizer_entry else None,
            "stop_token_ids": [tokenizer_entry["end_token_id"]] if tokenizer_entry else [],
            "signatures": contract.causal_lm_signatures(
                prefill_lengths, decode_windows, cache_length, config.num_layers,
                config.kv_heads, config.head_dim, config.vocabulary_size, prefill_windows),
        }

        def record(data):
            data["preset"] = name
            data["config"] = config.to_dict()
            section = data.setdefault("causal_lm", {})
            variants_before = section.get("variants", {})
            if section.get("cache_len") not in (None, cache_length) or section.get(
                    "prefill_lengths") not in (None, prefill_lengths) or section.get(
                    "decode_windows", decode_windows) != decode_windows or section.get(
                    "prefill_windows", []) != prefill_windows:  # none before they existed
                variants_before = {}  # other shapes: those files no longer match this entry
            bundles = section.get("litertlm") or {}
            if not variants_before:
                bundles = {}
            for variant in entries:  # a bundle of a file written again is stale
                bundles.pop(variant, None)
            section.update(causal_lm)
            section["variants"] = {**variants_before, **entries}
            if bundles:
                section["litertlm"] = bundles
            else:
                section.pop("litertlm", None)

        staging.commit(record)
    return entries
