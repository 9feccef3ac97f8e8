"""Perplexity and greedy agreement of a causal LM on held-out token ids, in
every runtime.

The held-out ids are one stream. It is cut into windows of `window` tokens
(the last one may be shorter), each scored on its own from an empty cache:
every token of a window but the first is predicted from the ones before it.
Perplexity is exp of the mean negative log-likelihood over those tokens,
computed in float64 from each runtime's float32 logits, so runtimes differ
only by their logits.

A scorer maps windows (rows, L) int32 to logits (rows, L, vocabulary):

    keras_scorer(lm)            falcon_tf.FalconCausalLM, XLA-compiled forward
    saved_model_scorer(lm)      falcon_tf.serving.FalconCausalLM, its `prefill`
    tflite_scorer(lm)           falcon_tf.lite.FalconCausalLM, its decode steps

Example:

>>> import numpy as np

from falcon_tf.artifacts import contract
>>> from falcon_tf import FalconCausalLM
>>> from falcon_tf.runtime.evaluation import keras_scorer, perplexity
>>> lm = FalconCausalLM.from_preset("falcon_tiny_random")
>>> ids = np.arange(40) % 1024
>>> result = perplexity(keras_scorer(lm), ids, window=16)
>>> result["tokens"]   # 16 + 16 + 8 tokens, the first of each window not predicted
37
"""

import math
import os

import numpy as np

from falcon_tf.artifacts import contract

DEFAULT_WINDOW = 128
HELDOUT_FILE = "heldout_token_ids.npy"
CALIBRATION_FILE = "calibration_token_ids.npy"


def _check_ids(token_ids, name="token_ids"):
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or ids.size < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`{name}` must be a 1-D sequence of at least 2 integer token ids; "
                         f"received shape {ids.shape} and dtype {ids.dtype}.")
    if ids.min() < 0:
        raise ValueError(f"`{name}` holds a negative id ({int(ids.min())}).")
    return ids.astype(np.int32)


def _check_window(window):
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"`window` must be an integer of at least 2; received {window!r}.")
    return int(window)


def windows(token_ids, window=DEFAULT_WINDOW):
    """The stream cut into consecutive windows: a list of 1-D int32 arrays of
    `window` ids, the last one shorter when the stream does not divide (a
    final window of a single id, which predicts nothing, is dropped)."""
    ids, window = _check_ids(token_ids), _check_window(window)
    out = [ids[start:start + window] for start in range(0, len(ids), window)]
    return [w for w in out if len(w) >= 2]


def token_nll(logits, token_ids):
    """Negative log-likelihood (float64) of token_ids[1:] under logits[:-1]:
    logits (L, vocabulary), token_ids (L,) -> (L - 1,)."""
    logits = np.asarray(logits, np.float64)[:-1]
    targets = np.asarray(token_ids)[1:]
    if logits.ndim != 2 or len(logits) != len(targets):
        raise ValueError(f"`logits` must be (L, vocabulary) for L = {len(token_ids)} ids; "
                         f"received shape {np.shape(logits)}.")
    if targets.max() >= logits.shape[1]:
        raise ValueError(f"Token id {int(targets.max())} is outside the model's vocabulary "
                         f"of {logits.shape[1]}.")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    return log_z - shifted[np.arange(len(targets)), targets]


def perplexity(scorer, token_ids, window=DEFAULT_WINDOW, batch=32):
    """exp(mean NLL) of every window's tokens after its first.

    `scorer` maps (rows, L) int32 windows to (rows, L, vocabulary) logits;
    windows of equal length go to it `batch` rows at a time. Returns
    {"perplexity", "nll" (mean, nats), "tokens" (how many were predicted),
    "window"}."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"`batch` must be a positive integer; received {batch!r}.")
    pieces = windows(token_ids, window)
    total, count = 0.0, 0
    by_length = {}
    for piece in pieces:
        by_length.setdefault(len(piece), []).append(piece)
    for group in by_length.values():
        for start in range(0, len(group), batch):
            rows = np.stack(group[start:start + batch])
            logits = np.asarray(scorer(rows))
            if logits.shape[:2] != rows.shape:
                raise ValueError(f"The scorer returned logits of shape {logits.shape} for "
                                 f"windows of shape {rows.shape}.")
            for row_logits, row in zip(logits, rows):
                nll = token_nll(row_logits, row)
                total += float(nll.sum())
                count += len(nll)
    mean = total / count
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": count, "window": int(window)}


# --- scorers: one per runtime ---

def _power_of_two(n, least=1):
    size = least
    while size < n:
        size *= 2
    return size


def keras_scorer(lm):
    """falcon_tf.FalconCausalLM: the uncached forward, compiled with XLA. Rows
    and length are padded to powers of two (compiled once per shape; the model
    is causal, so tokens after a position never change its logits)."""
    from falcon_tf._keras import tf

    forward = tf.function(lambda x: lm(x), jit_compile=True)

    def score(rows):
        rows = np.asarray(rows, np.int32)
        batch, length = rows.shape
        padded = np.zeros((_power_of_two(batch), _power_of_two(length, 16)), np.int32)
        padded[:batch, :length] = rows
        logits = forward({"token_ids": tf.constant(padded),
                          "padding_mask": tf.ones_like(padded)})
        return logits.numpy()[:batch, :length]

    return score


def saved_model_scorer(lm):
    """falcon_tf.serving.FalconCausalLM: its `prefill` signature from an empty
    cache as long as the window."""
    import tensorflow as tf

    specs = lm.prefill.structured_input_signature[1]
    caches = sorted(n for n in specs if n not in ("tokens", "input_pos"))
    # The batch (axis 0) and the slots are left open: (batch, kv, C, d), or
    # (batch, C, kv, d) in SavedModels exported before the head-major caches.
    layout = specs[caches[0]].shape.as_list()

    def score(rows):
        rows = np.asarray(rows, np.int32)
        batch, length = rows.shape
        shape = [batch if axis == 0 else length if size is None else size
                 for axis, size in enumerate(layout)]
        empty = tf.zeros(shape, tf.float32)
        positions = np.broadcast_to(np.arange(length, dtype=np.int32), rows.shape)
        out = lm.prefill(tokens=tf.constant(rows), input_pos=tf.constant(positions),
                         **{n: empty for n in caches})
        return out["logits"].numpy()

    return score


def tflite_scorer(lm):
    """falcon_tf.lite.FalconCausalLM: one window at a time, one decode step
    per token (a prefill returns no logits; the window must fit its cache)."""
    def score(rows):
        return np.stack([lm.logits(row) for row in np.asarray(rows, np.int32)])

    return score


# --- greedy continuations ---

def heldout_prompts(token_ids, start_token_id, count=10, length=16):
    """`count` prompts of `length` ids from the held-out stream: the openings
    of documents (each starts at a `start_token_id`), evenly spaced."""
    ids = _check_ids(token_ids)
    starts = [int(i) for i in np.flatnonzero(ids == start_token_id) if i + length <= len(ids)]
    if len(starts) < count:
        raise ValueError(f"The held-out ids hold {len(starts)} documents of at least {length} "
                         f"tokens; {count} prompts asked for.")
    chosen = [starts[i] for i in np.linspace(0, len(starts) - 1, count).round().astype(int)]
    return [ids[s:s + length].tolist() for s in chosen]


def greedy_continuations(lm, prompts, new_tokens=32):
    """Each prompt's greedy continuation (new tokens only), one prompt at a time."""
    return [lm.generate([p], max_length=len(p) + new_tokens, stop_token_ids=None,
                        strip_prompt=True)[0] for p in prompts]


def agreement(reference, other):
    """Fraction of continuations identical to the reference's."""
    if len(reference) != len(other) or not reference:
        raise ValueError("`reference` and `other` must be non-empty lists of equal length.")
    return sum(list(a) == list(b) for a, b in zip(reference, other)) / len(reference)


# --- the preset's own held-out and calibration ids ---

def _preset_file(preset, filename):
    """A file shipped in an embedded preset's directory, or None."""
    from falcon_tf.checkpoints import presets as _presets
    from falcon_tf.checkpoints import handles

    if isinstance(preset, str) and preset in _presets.BACKBONE_PRESETS:
        entry = _presets.BACKBONE_PRESETS[preset]
        if "embedded_dir" not in entry:
            return None
        directory = handles.embedded_dir(entry)
    elif isinstance(preset, (str, os.PathLike)) and os.path.isdir(preset):
        directory = os.fspath(preset)
        if not os.path.isfile(os.path.join(directory, filename)):
            # An exported artifact: its manifest names the preset it came from.
            from falcon_tf.json_file import json_or_none

            data = json_or_none(os.path.join(directory, contract.MANIFEST_FILE)) or {}
            name = data.get("preset")
            return _preset_file(name, filename) if name and name != preset else None
    else:
        return None
    path = os.path.join(directory, filename)
    return path if os.path.isfile(path) else None


def preset_token_ids(preset, filename=HELDOUT_FILE):
    """The held-out (or, with CALIBRATION_FILE, calibration) ids a preset ships:
    a builtin name, a preset directory, or an artifact exported from one.
    None when it ships none."""
    path = _preset_file(preset, filename)
    return None if path is None else np.load(path).astype(np.int32)


# --- one runtime against Keras: what `falcon-tf eval` runs ---

RUNTIMES = ("keras", "saved_model", "tflite")


def load_runtime(preset, runtime, variant=contract.DEFAULT_VARIANT, cache_length=DEFAULT_WINDOW, num_threads=2):
    """(the causal LM of `runtime`, its scorer). keras: any preset; saved_model
    and tflite: an artifact directory or an exported preset's name."""
    if runtime == "keras":
        from falcon_tf import FalconCausalLM

        lm = FalconCausalLM.from_preset(preset, cache_length=cache_length)
        return lm, keras_scorer(lm)
    if runtime == "saved_model":
        from falcon_tf.serving import FalconCausalLM

        lm = FalconCausalLM.from_preset(preset)
        return lm, saved_model_scorer(lm)
    if runtime == "tflite":
        from falcon_tf.lite import FalconCausalLM

        lm = FalconCausalLM.from_preset(preset, variant=variant, num_threads=num_threads)
        return lm, tflite_scorer(lm)
    raise ValueError(f"`runtime` must be one of {', '.join(RUNTIMES)}; received {runtime!r}.")


def keras_reference(preset):
    """The Keras preset an artifact was exported from: its `keras_preset/`
    directory (written by `falcon-tf demo`), else the builtin preset its
    manifest names; a preset itself otherwise."""
    from falcon_tf.checkpoints import presets as _presets
    from falcon_tf.json_file import json_or_none

    if isinstance(preset, (str, os.PathLike)) and os.path.isdir(preset):
        directory = os.fspath(preset)
        if os.path.isfile(os.path.join(directory, "keras_preset", "config.json")):
            return os.path.join(directory, "keras_preset")
        name = (json_or_none(os.path.join(directory, contract.MANIFEST_FILE)) or {}).get("preset")
        if name in _presets.BACKBONE_PRESETS:
            return name
        if os.path.isfile(os.path.join(directory, "config.json")):
            return directory
        raise ValueError(f"No Keras model to compare {directory} with: it has no keras_preset/ "
                         f"and its manifest names no builtin preset.")
    return preset


def evaluate(preset, runtime="keras", variant=contract.DEFAULT_VARIANT, token_ids=None, window=DEFAULT_WINDOW,
             prompts=10, new_tokens=32, compare=True):
    """Perplexity of one runtime on held-out ids and, with `compare`, Keras's
    on the same ids and the greedy continuations of `prompts` held-out prompts
    against Keras's.

    token_ids: 1-D ids; None takes the held-out ids the preset ships.
    Returns {"perplexity", "tokens", "window", and with `compare`:
    "keras_perplexity", "delta" (relative), "greedy_identical" (fraction),
    "prompts"}."""
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {', '.join(RUNTIMES)}; received {runtime!r}.")
    window = _check_window(window)
    if isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 0:
        raise ValueError(f"`prompts` must be a non-negative integer; received {prompts!r}.")
    if token_ids is None:
        token_ids = preset_token_ids(preset)
        if token_ids is None:
            raise ValueError(f"{preset!r} ships no held-out token ids; pass `token_ids` "
                             f"(falcon-tf eval --ids FILE.npy).")
    token_ids = _check_ids(token_ids)
    prompt_length = 16
    cache_length = max(window, prompt_length + new_tokens)
    lm, scorer = load_runtime(preset, runtime, variant, cache_length)
    if runtime == "tflite" and window > lm.cache_length:
        raise ValueError(f"`window` ({window}) exceeds the file's cache length "
                         f"({lm.cache_length}).")
    result = perplexity(scorer, token_ids, window)
    if not compare:
        return result
    if runtime == "keras":
        reference, reference_result = lm, result
    else:
        reference, reference_scorer = load_runtime(keras_reference(preset), "keras",
                                                   cache_length=cache_length)
        reference_result = perplexity(reference_scorer, token_ids, window)
    result["keras_perplexity"] = reference_result["perplexity"]
    result["delta"] = result["perplexity"] / reference_result["perplexity"] - 1.0
    if prompts:
        if reference.tokenizer is None:
            raise ValueError("Greedy comparison needs the preset's tokenizer (its start token); "
                             "pass prompts=0.")
        chosen = heldout_prompts(token_ids, reference.tokenizer.start_token_id, prompts,
                                 prompt_length)
        expected = greedy_continuations(reference, chosen, new_tokens)
        got = expected if lm is reference else greedy_continuations(lm, chosen, new_tokens)
        result["greedy_identical"] = agreement(expected, got)
        result["prompts"] = prompts
    return result


def perplexity_tokens(token_ids, window=DEFAULT_WINDOW):
    """How many tokens `perplexity` predicts in `token_ids` with `window`."""
    return sum(len(w) - 1 for w in windows(token_ids, window))
