"""What every runtime's `generate` shares: checking the request before any
compute, and shaping the answer like the question. numpy only (the on-device
loader uses it too).
"""

import dataclasses

import numpy as np

from falcon_tf.runtime import samplers as _samplers


@dataclasses.dataclass
class Request:
    """A checked generation request."""

    rows: list  # prompt token ids, one list per row
    fmt: str  # "string", "strings", "dict", "ids" or "row": the caller's form
    max_length: int
    sampler: _samplers.Sampler
    stop_token_ids: list
    seed: int
    tokenizer: object = None

    @property
    def longest(self):
        return max(len(r) for r in self.rows)

    def format(self, tokens, ends, strip_prompt=False):
        """tokens (b, >= max_length), ends (b,) -> the caller's form."""
        tokens = np.asarray(tokens)[:, :self.max_length]
        ends = np.asarray(ends)
        out = [tokens[i, len(row) if strip_prompt else 0:ends[i]].tolist()
               for i, row in enumerate(self.rows)]
        if self.fmt == "dict":
            width = self.max_length - (min(len(r) for r in self.rows) if strip_prompt else 0)
            ids = np.zeros((len(out), width), np.int32)
            mask = np.zeros((len(out), width), bool)
            for i, row in enumerate(out):
                ids[i, :len(row)], mask[i, :len(row)] = row, True
            return {"token_ids": ids, "padding_mask": mask}
        if self.fmt in ("string", "strings"):
            # As keras-hub's postprocessing: special tokens (start and end) are dropped.
            special = set(self.tokenizer.special_token_ids) | {self.tokenizer.start_token_id}
            texts = [self.tokenizer.detokenize([t for t in row if t not in special])
                     for row in out]
            return texts[0] if self.fmt == "string" else texts
        return out[0] if self.fmt == "row" else out


def _texts(inputs):
    """A string, or a list / 1-D array of strings (str or UTF-8 bytes) -> (list
    of str, was one string); None for anything else."""
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "USO" and inputs.ndim <= 1 \
            and inputs.size and all(isinstance(x, (str, bytes)) for x in inputs.reshape(-1)):
        inputs = inputs.tolist()
    if isinstance(inputs, (str, bytes)):
        return [_decode(inputs)], True
    if isinstance(inputs, (list, tuple)) and inputs and all(
            isinstance(x, (str, bytes)) for x in inputs):
        return [_decode(x) for x in inputs], False
    return None


def _decode(text):
    return text.decode("utf-8") if isinstance(text, bytes) else text


def _rows(inputs, tokenizer, add_start_token=True):
    """-> (prompt rows, the caller's form, the width of a dict's token_ids or None)."""
    texts = _texts(inputs)
    if texts is not None:
        if tokenizer is None:
            raise ValueError("This model has no tokenizer: pass token ids, or load a preset "
                             "or artifact that has tokenizer files.")
        texts, one = texts
        start = [tokenizer.start_token_id] if add_start_token else []  # as keras-hub's
        return [start + ids for ids in tokenizer.tokenize(texts)], (
            "string" if one else "strings"), None
    if isinstance(inputs, dict):
        missing = {"token_ids", "padding_mask"} - set(inputs)
        if missing:
            raise ValueError(f"`inputs` dict needs token_ids and padding_mask; missing "
                             f"{', '.join(sorted(missing))}.")
        ids = np.asarray(inputs["token_ids"])
        mask = np.asarray(inputs["padding_mask"])
        if ids.ndim == 1:
            ids, mask = ids[None], mask[None]
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"`token_ids` and `padding_mask` must have one shape "
                             f"(batch, seq); received {ids.shape} and {mask.shape}.")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"`token_ids` must be integers; received {ids.dtype}.")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("`padding_mask` must hold only 0 and 1 (or booleans).")
        mask = mask.astype(bool)
        lengths = mask.sum(axis=1)
        if not (mask == (np.arange(ids.shape[1])[None] < lengths[:, None])).all():
            raise ValueError("`padding_mask` must be right-padded: ones, then zeros.")
        return [row[:n].tolist() for row, n in zip(ids, lengths)], "dict", ids.shape[1]
    if isinstance(inputs, (list, tuple)) and inputs and all(
            isinstance(r, (list, tuple, np.ndarray)) for r in inputs):
        return [np.asarray(r).tolist() for r in inputs], "ids", None
    if isinstance(inputs, np.ndarray) and inputs.ndim == 2:
        return inputs.tolist(), "ids", None
    if isinstance(inputs, (list, tuple, np.ndarray)) and len(inputs) and np.asarray(
            inputs).ndim == 1:
        return [np.asarray(inputs).tolist()], "row", None
    raise ValueError("`inputs` must be a string, a list of strings, a list of token id "
                     "lists, or a dict of token_ids and padding_mask.")


def prepare(inputs, tokenizer, vocabulary_size, cache_length, max_length=None,
            sampler="greedy", stop_token_ids="auto", seed=None, add_start_token=True,
            default_max_length=None):
    """Checks a `generate` call and returns a `Request`; raises ValueError naming
    the argument at fault. See `FalconCausalLM.generate` for the arguments.

    Without `max_length`, a dict of token_ids is generated to its own width
    (keras-hub's rule: generation fills the padding), anything else to
    `default_max_length` (when given) or `cache_length`. `add_start_token`:
    whether text prompts begin with the start token.
    """
    rows, fmt, width = _rows(inputs, tokenizer, add_start_token)
    if not rows:
        raise ValueError("`inputs` holds no prompt (a batch of 0 rows); pass at least one.")
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"Prompt {i} is empty: a prompt needs at least one token.")
        bad = [t for t in row if isinstance(t, bool) or not isinstance(t, int)
               or not 0 <= t < vocabulary_size]
        if bad:
            raise ValueError(f"Prompt {i} has token ids outside [0, {vocabulary_size}): "
                             f"{bad[:5]}.")
        if len(row) > cache_length:
            raise ValueError(f"Prompt {i} has {len(row)} tokens, more than the cache holds "
                             f"(cache_length={cache_length}).")
    longest = max(len(r) for r in rows)
    if max_length is None:
        max_length = width if width is not None else (default_max_length or cache_length)
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
        raise ValueError(f"`max_length` must be an integer; received {max_length!r}.")
    if max_length > cache_length:
        raise ValueError(f"`max_length` ({max_length}) is beyond the cache's capacity "
                         f"(cache_length={cache_length}).")
    if max_length < longest:
        raise ValueError(f"`max_length` ({max_length}) is shorter than the longest prompt "
                         f"({longest} tokens).")
    if isinstance(stop_token_ids, str) and stop_token_ids == "auto":
        if tokenizer is None:
            raise ValueError('`stop_token_ids="auto"` needs a tokenizer; pass a list of ids, '
                             'or None to always generate `max_length` tokens.')
        stop_token_ids = [tokenizer.end_token_id]
    stop_token_ids = list(stop_token_ids or [])
    bad = [t for t in stop_token_ids if isinstance(t, bool) or not isinstance(
        t, (int, np.integer)) or not 0 <= t < vocabulary_size]
    if bad:
        raise ValueError(f"`stop_token_ids` must be ids in [0, {vocabulary_size}); "
                         f"received {bad}.")
    sampler = _samplers.resolve(sampler)
    if seed is None:
        seed = sampler.seed
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2 ** 31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer or None; received {seed!r}.")
    return Request(rows, fmt, int(max_length), sampler, [int(t) for t in stop_token_ids],
                   int(seed) % (2 ** 31), tokenizer)
