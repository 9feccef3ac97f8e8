"""Checks a runtime loader's inputs before any interpreter or graph sees them.

numpy only: shared by the TF Serving and the on-device loaders.
"""

import numpy as np


def validate(inputs, vocabulary_size, max_length=None):
    """`{"token_ids", "padding_mask"}` -> two int32 (batch, seq) arrays, or ValueError
    naming the input at fault."""
    if not isinstance(inputs, dict) or set(inputs) != {"token_ids", "padding_mask"}:
        found = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise ValueError(f"inputs must be a dict with exactly `token_ids` and `padding_mask`; "
                         f"received {found}.")
    arrays = {}
    for name in ("token_ids", "padding_mask"):
        array = np.asarray(inputs[name])
        allowed = np.issubdtype(array.dtype, np.integer) or (
            name == "padding_mask" and array.dtype == np.bool_)
        if not allowed:
            raise ValueError(f"`{name}` must hold integers; received dtype {array.dtype}.")
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(f"`{name}` must be (batch, seq) with both at least 1; received "
                             f"shape {array.shape}.")
        arrays[name] = array
    ids, mask = arrays["token_ids"], arrays["padding_mask"]
    if ids.shape != mask.shape:
        raise ValueError(f"`token_ids` {ids.shape} and `padding_mask` {mask.shape} must have "
                         f"the same shape.")
    if max_length is not None and ids.shape[1] > max_length:
        raise ValueError(f"`token_ids` has {ids.shape[1]} positions; this export takes at most "
                         f"{max_length}.")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocabulary_size:
        bad = low if low < 0 else high
        raise ValueError(f"`token_ids` holds {bad}, outside [0, {vocabulary_size}).")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("`padding_mask` must hold only 0 and 1.")
    return ids.astype(np.int32), mask.astype(np.int32)
