"""benchmarks/int4_schemes.py: its smoothing is an exact re-parameterisation."""

import os
import sys

import numpy as np
import pytest

from trained_like import SHAPE, trained_like
from falcon_tf import FalconBackbone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import int4_schemes  # noqa: E402


@pytest.mark.parametrize("kv_heads", [None, 2])  # multi-head, and grouped value heads
def test_smoothing_leaves_the_model_output_as_it_was(kv_heads):
    from converters import gptq

    model = trained_like(FalconBackbone(**SHAPE, num_kv_heads=kv_heads), seed=0)
    x = {"token_ids": (np.arange(32, dtype="int32").reshape(2, 16) * 37) % 2048,
         "padding_mask": np.ones((2, 16), "int32")}
    before = model(x).numpy()
    kernels = [v.numpy() for v in model.weights if v.path.endswith("kernel")]
    int4_schemes.smooth(model, 0.5, gptq.default_calibration(model.vocabulary_size, (2, 16)))
    after = model(x).numpy()
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
    # It did change the weights.
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(
        kernels, [v for v in model.weights if v.path.endswith("kernel")]))


def test_smoothing_refuses_bad_alpha_and_parallel_attention():
    model = FalconBackbone(**SHAPE)
    with pytest.raises(ValueError, match="`alpha` must lie in"):
        int4_schemes.smooth(model, 1.5, np.zeros((1, 4), "int32"))
    parallel = FalconBackbone(**SHAPE, parallel_attention=True)
    with pytest.raises(ValueError, match="parallel attention"):
        int4_schemes.smooth(parallel, 0.5, np.zeros((1, 4), "int32"))


def test_full_size_bytes_of_the_current_scheme():
    # falcon_refinedweb_1b_en: int8 table and attention, int4 MLP in blocks of 32.
    h, m, layers, vocabulary = 2048, 8192, 24, 50304
    expected = vocabulary * h + layers * (3 * h * h + h * h + 2 * (h * m // 2 + 2 * h * m // 32))
    schemes = int4_schemes.schemes()
    assert int4_schemes.full_size_weight_bytes(schemes["current"]) == expected
    assert int4_schemes.full_size_weight_bytes(schemes["mlp128"]) < \
        int4_schemes.full_size_weight_bytes(schemes["mlp64"]) < expected
