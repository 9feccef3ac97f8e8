"""Imports Keras on the TensorFlow backend, or fails saying how to fix it.

Every module that builds or runs the Keras model imports `keras` from here.
"""

import json
import os
import sys

_FIX = (
    "falcon_tf's Keras model runs on the TensorFlow backend. Set the "
    "environment variable KERAS_BACKEND=tensorflow (or \"backend\": "
    "\"tensorflow\" in ~/.keras/keras.json) before Python starts, or before "
    "anything imports keras."
)


def _requested_backend():
    """The backend Keras will pick, read the way Keras reads it, without importing it."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "the environment variable KERAS_BACKEND"
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(home, "keras.json")
    try:
        with open(path) as f:
            return json.load(f).get("backend"), path
    except (OSError, ValueError, AttributeError):
        return None, None


if "keras" in sys.modules:
    _backend, _source = sys.modules["keras"].backend.backend(), "an earlier import of keras"
else:
    _backend, _source = _requested_backend()
    if _backend is None:
        # Keras reads the backend once, on first import: choose ours if unset.
        os.environ["KERAS_BACKEND"] = _backend = "tensorflow"
if _backend != "tensorflow":
    raise ImportError(f"Keras is set to the {_backend!r} backend (by {_source}). {_FIX}")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "tf"]
