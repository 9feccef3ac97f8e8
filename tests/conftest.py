"""Shared tiny models and inputs. Nothing here downloads anything."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The seed's own example.
SEED_KWARGS = dict(vocabulary_size=10, num_layers=2, num_attention_heads=2, hidden_dim=32,
                   intermediate_dim=128)
SEED_INPUT = {
    "token_ids": np.ones(shape=(1, 12), dtype="int32"),
    "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], dtype="int32"),
}


# The family's architectures as FalconBackbone arguments on top of a tiny config.
FAMILY = {
    "rw": {},
    "7b": dict(num_kv_heads=1, position_embedding="rotary", parallel_attention=True,
               use_bias=False),
    "40b": dict(num_kv_heads=2, position_embedding="rotary", parallel_attention=True,
                separate_mlp_layer_norm=True, use_bias=False),
}


def tiny_kwargs(num_attention_heads=4, head_dim=8, vocabulary_size=13, num_layers=2):
    """A small config; the vocabulary (13) is deliberately not a multiple of 8."""
    hidden = num_attention_heads * head_dim
    return dict(vocabulary_size=vocabulary_size, num_layers=num_layers,
                num_attention_heads=num_attention_heads, hidden_dim=hidden,
                intermediate_dim=4 * hidden)


def padded_batch(vocabulary_size, seq=7, seed=0):
    """Right padding, left padding and no padding in one batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocabulary_size, size=(3, seq)).astype("int32")
    mask = np.ones((3, seq), dtype="int32")
    mask[0, seq - 2:] = 0  # right padded
    mask[1, :3] = 0  # left padded
    return {"token_ids": ids, "padding_mask": mask}


def randomize(model, seed=0, scale=0.3):
    """Large random weights, so that mistakes show up well above float noise."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        var.assign(rng.normal(0.0, scale, tuple(var.shape)).astype("float32"))
    return model


@pytest.fixture
def keras_hub():
    import keras_hub

    return keras_hub


def make_venv(name, *packages):
    """A virtual environment holding only `packages`; returns its python.

    Made once, beside the test environment (`sys.prefix`, which `make clean`
    removes) under a name that hashes the packages, and reused by later runs
    and by every pytest worker (a lock file makes the others wait while one
    builds it)."""
    import fcntl
    import hashlib
    import shutil

    key = hashlib.sha256("\n".join(packages).encode()).hexdigest()[:12]
    root = os.path.join(sys.prefix, "falcon-tf-test-venvs")
    os.makedirs(root, exist_ok=True)
    venv = os.path.join(root, f"{name}-{key}")
    python = os.path.join(venv, "bin", "python")
    done = os.path.join(venv, ".complete")
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            shutil.rmtree(venv, ignore_errors=True)  # a build cut short
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            proc = subprocess.run([python, "-m", "pip", "install", "-q", *packages],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-2000:]
            open(done, "w").close()
    return python


@pytest.fixture(scope="session")
def tflite_runtime_2_14():
    """tflite-runtime 2.14 (the last release) with the numpy < 2 it needs."""
    return make_venv("tflite_runtime_2_14", "tflite-runtime==2.14.0", "numpy<2")


@pytest.fixture(scope="session")
def litert_only():
    """What an edge device has: numpy and ai-edge-litert, no TensorFlow, no Keras."""
    return make_venv("litert_only", "ai-edge-litert>=2.3,<2.4")


def unsign(preset_dir):
    """Drops the checksums falcon_tf records in a preset's metadata.json, leaving
    a preset as keras-hub writes it: its files are then checked field by field."""
    import json

    from falcon_tf.checkpoints.handles import METADATA_FILE
    from falcon_tf.checkpoints.keras_hub import CHECKSUMS_FIELD

    path = os.path.join(preset_dir, METADATA_FILE)
    with open(path) as f:
        data = json.load(f)
    data.pop(CHECKSUMS_FIELD)
    with open(path, "w") as f:
        json.dump(data, f)
    return preset_dir
