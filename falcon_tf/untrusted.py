"""Checks on what a checkpoint, preset or artifact brings from outside.

Nothing named by a file may reach outside its own directory, and no weight may
be anything but finite floating-point numbers. The standard library only
(numpy where weights are checked): the loaders of every runtime share these.
"""

import os

# 2-byte floats numpy knows by name once ml_dtypes is imported.
_FLOAT_NAMES = ("float16", "float32", "float64", "bfloat16")


def path_inside(directory, relative, source):
    """`directory`/`relative`, refused (ValueError naming `source`) when the name
    or a symlink on the way leads outside `directory`.

    Names are relative and without `..`. A symlink is followed only to a target
    inside `directory` or, for a directory of Hugging Face's cache
    (`<repo>/snapshots/<revision>/`), into that repository's `blobs/`, where the
    cache keeps the files its snapshots link to.
    """
    text = os.fspath(relative)
    parts = text.replace("\\", "/").split("/")
    if os.path.isabs(text) or ".." in parts or not text:
        raise ValueError(f"{source}: path {text!r} must be relative to {directory} and stay "
                         f"inside it.")
    path = os.path.join(directory, text)
    root = os.path.realpath(directory)
    real = os.path.realpath(path)
    if real.startswith(root + os.sep):
        return path
    snapshots = os.path.dirname(root)
    if os.path.basename(snapshots) == "snapshots":
        blobs = os.path.join(os.path.dirname(snapshots), "blobs")
        if real.startswith(blobs + os.sep):
            return path
    raise ValueError(f"{source}: {path} leads to {real}, outside {directory}; a checkpoint's "
                     f"files must lie inside its directory.")


def check_weight(array, source, name):
    """A weight read from `source` must hold finite floats; ValueError naming it."""
    import numpy as np

    dtype = np.asarray(array).dtype
    if dtype.name not in _FLOAT_NAMES:
        raise ValueError(f"{source}: weight {name} has dtype {dtype.name}; weights must be "
                         f"float16, bfloat16, float32 or float64.")
    values = np.asarray(array)
    if dtype.name == "bfloat16":
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        bad = "NaN" if np.isnan(values).any() else "infinite"
        raise ValueError(f"{source}: weight {name} holds {bad} values.")
    return array


def check_memory(parameters, bytes_per_parameter, what):
    """Refuses, before any allocation, a model whose weights alone exceed this
    machine's physical memory."""
    needed = parameters * bytes_per_parameter
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform reports it
        return
    if needed > total:
        raise ValueError(f"{what} has {parameters:,} parameters: {needed / 2**30:,.1f} GiB of "
                         f"weights, more than this machine's {total / 2**30:,.1f} GiB of memory. "
                         f"Check the sizes in its config.")
