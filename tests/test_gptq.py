"""GPTQ-style rounding of the int8/int4 files' projection weights (converters/gptq.py)."""

import re

import ml_dtypes
import numpy as np
import pytest

from trained_like import trained_like
from converters import gptq
from converters.export_tflite import RECIPES, convert
from falcon_tf import FalconBackbone

pytest.importorskip("ai_edge_quantizer")

CONFIG = dict(vocabulary_size=256, num_layers=2, num_attention_heads=4, hidden_dim=64,
              intermediate_dim=256)


def heavy_tailed(rng, shape):
    return rng.standard_t(4, shape) * np.exp(rng.uniform(-1, 1, shape[-1]))


def mixing(rng, dim):
    """Correlated channels, a few of them large (as after a trained LayerNorm)."""
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    mix[:, :: max(1, dim // 8)] *= 8
    return mix


def correlated_inputs(rng, tokens, mix):
    return rng.normal(size=(tokens, mix.shape[0])) @ mix


@pytest.mark.parametrize("bits, block", [(8, None), (4, 32)])
def test_weights_land_on_the_grid_ai_edge_quantizer_derives_from_them(bits, block):
    rng = np.random.default_rng(0)
    kernel = heavy_tailed(rng, (64, 48)).astype("float32")
    x = correlated_inputs(rng, 500, mixing(rng, 64))
    rounded = gptq.gptq_round(kernel, x.T @ x, bits, block)
    assert rounded.dtype == np.float32 and rounded.shape == kernel.shape
    levels = 2 ** (bits - 1) - 1
    # The scales, as ai-edge-quantizer computes them from the rounded weights.
    groups = np.abs(rounded.T).reshape(48, -1, block or 64)
    scale = groups.max(axis=-1) / np.float32(levels)
    if block:
        scale = scale.astype(ml_dtypes.bfloat16).astype(np.float32)
    on_grid = rounded.T.reshape(groups.shape) / scale[..., None]
    np.testing.assert_allclose(on_grid, np.round(on_grid), atol=1e-3)
    assert np.abs(on_grid).max() <= levels + 1e-3
    # ... and the grid is the float weights' own: the same scales.
    float_groups = np.abs(kernel.T).reshape(groups.shape).max(axis=-1) / np.float32(levels)
    if block:
        float_groups = float_groups.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_allclose(scale, float_groups, rtol=1e-6)


@pytest.mark.parametrize("bits, block", [(8, None), (4, 32)])
def test_rounding_lowers_the_output_error_on_the_calibration_inputs(bits, block):
    rng = np.random.default_rng(1)
    kernel = heavy_tailed(rng, (128, 64)).astype("float32")
    mix = mixing(rng, 128)
    x = correlated_inputs(rng, 1000, mix)
    scale, levels, _ = gptq.grid(kernel.T, bits, block)
    nearest = (np.clip(np.round(kernel.T / scale), -levels, levels) * scale).T
    rounded = gptq.gptq_round(kernel, x.T @ x, bits, block)
    error = np.linalg.norm(x @ (rounded - kernel))
    assert error < 0.7 * np.linalg.norm(x @ (nearest - kernel))
    # On inputs it was not calibrated on, drawn alike, it still helps.
    fresh = correlated_inputs(np.random.default_rng(10), 1000, mix)
    assert np.linalg.norm(fresh @ (rounded - kernel)) < np.linalg.norm(fresh @ (nearest - kernel))


def test_uncorrelated_inputs_leave_round_to_nearest():
    # A diagonal H: no weight can compensate another, so each is rounded alone.
    rng = np.random.default_rng(2)
    kernel = heavy_tailed(rng, (64, 32)).astype("float32")
    scale, levels, _ = gptq.grid(kernel.T, 8)
    nearest = (np.round(kernel.T / scale) * scale).T
    hessian = np.diag(rng.uniform(1, 10, 64))
    np.testing.assert_allclose(gptq.gptq_round(kernel, hessian, 8), nearest, rtol=0, atol=1e-7)


def test_layer_hessians_sum_each_dense_layers_inputs():
    model = trained_like(FalconBackbone(**CONFIG), seed=0)
    layer = model.get_layer("transformer_layer_0").dense_4h_to_h
    ids = gptq.default_calibration(CONFIG["vocabulary_size"], (2, 8))
    seen = []
    original = layer.call

    def spy(inputs, *args, **kwargs):
        seen.append(np.asarray(inputs).reshape(-1, inputs.shape[-1]))
        return original(inputs, *args, **kwargs)

    object.__setattr__(layer, "call", spy)
    try:
        hessians = gptq.layer_hessians(model, ids, [layer])
        assert vars(layer)["call"] is spy  # the recorder is gone, the spy back
    finally:
        object.__delattr__(layer, "call")
    x = np.concatenate(seen).astype(np.float64)
    assert x.shape == (16, CONFIG["intermediate_dim"])
    expected = x.T @ x  # each call's product in float32, the sum over calls in float64
    np.testing.assert_allclose(hessians[layer], expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    assert hessians[layer].dtype == np.float64
    gptq.layer_hessians(model, ids, [layer])
    assert "call" not in vars(layer)


def test_calibration_ids_are_checked():
    model = FalconBackbone(**CONFIG)
    with pytest.raises(ValueError, match=r"must lie in \[0, 256\)"):
        convert(model, "int8", 1, 8, calibration=np.full((1, 4), 256))
    with pytest.raises(ValueError, match="shape \\(rows, tokens\\)"):
        convert(model, "int8", 1, 8, calibration=np.zeros(4, "int32"))
    with pytest.raises(ValueError, match="`rounding` must be one of gptq, nearest"):
        convert(model, "int8", 1, 8, rounding="stochastic")


def file_weights(data):
    """{Keras layer path: dequantized FULLY_CONNECTED weight (out, in)} of a .tflite."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(data)
    graph = model.subgraphs[0]
    weights = {}
    for tensor in graph.tensors:
        name = tensor.name.decode()
        if "/Tensordot/MatMul" not in name or tensor.type not in (9, 17):  # INT8, INT4
            continue
        raw = np.frombuffer(model.buffers[tensor.buffer].data.tobytes(), np.uint8)
        quant = tensor.quantization
        if tensor.type == 9:
            levels = raw.view(np.int8).reshape(tensor.shape).astype(np.float32)
            value = levels * np.asarray(quant.scale, np.float32)[:, None]
        else:  # two int4 per byte, the first in the low nibble; float16 scale per block
            nibbles = np.stack([raw & 15, raw >> 4], axis=-1).reshape(-1).astype(np.int8)
            levels = np.where(nibbles > 7, nibbles - 16, nibbles).reshape(tensor.shape)
            scales = graph.tensors[quant.details.scales]
            scale = np.frombuffer(model.buffers[scales.buffer].data.tobytes(), np.float16)
            block = quant.details.blockSize
            scale = scale.reshape(tensor.shape[0], -1).astype(np.float32)
            value = levels.astype(np.float32) * np.repeat(scale, block, axis=1)
        weights[re.sub(r"_1/", "/", name).split("/Tensordot")[0]] = value
    return weights


@pytest.mark.parametrize("variant", ["int8", "int4"])
def test_the_file_holds_exactly_the_rounded_weights(variant):
    model = trained_like(FalconBackbone(**CONFIG), seed=0)
    before = [v.numpy() for v in model.weights]
    ids = gptq.default_calibration(CONFIG["vocabulary_size"], (2, 32))
    kernels = gptq.rounded_kernels(model, RECIPES[variant], ids)
    assert len(kernels) == 4 * CONFIG["num_layers"]
    weights = file_weights(convert(model, variant, 1, 8, calibration=ids))
    assert sorted(weights) == sorted(layer.path for layer in kernels)
    for layer, rounded in kernels.items():
        np.testing.assert_allclose(weights[layer.path], rounded.T, rtol=1e-6, atol=0,
                                   err_msg=layer.path)
        assert np.abs(rounded - layer.kernel.numpy()).max() > 0  # really rounded
    nearest = file_weights(convert(model, variant, 1, 8, rounding="nearest"))
    assert any(not np.array_equal(nearest[p], weights[p]) for p in weights)  # GPTQ moved some
    for original, variable in zip(before, model.weights):  # the model is left as it was
        np.testing.assert_array_equal(variable.numpy(), original)


def test_export_counts_gptq_memory_and_names_the_way_out(monkeypatch, tmp_path):
    from converters import export_tflite as module

    model = FalconBackbone(**CONFIG)
    extra = gptq.memory_bytes(model)
    h, i, n = CONFIG["hidden_dim"], CONFIG["intermediate_dim"], CONFIG["num_layers"]
    assert extra == n * (3 * h * h * 8 + i * i * 8 + 2 * 4 * (h * 3 * h + h * h + 2 * h * i))
    base = model.count_params() * 4 * module.CONVERSION_MEMORY_PER_FP32_BYTE
    monkeypatch.setattr(module, "_total_memory", lambda: base + extra / 2)
    with pytest.raises(ValueError, match="needs about"):
        module.export_tflite("m", tmp_path, model=model, variants=("int8",))

    class Reached(Exception):
        pass

    def reached(*args):
        raise Reached(args)

    monkeypatch.setattr(module, "convert", reached)
    with pytest.raises(Reached):  # round to nearest needs no more than before
        module.export_tflite("m", tmp_path, model=model, variants=("int8",), rounding="nearest")
    with pytest.raises(Reached):  # nor do the float variants
        module.export_tflite("m", tmp_path, model=model, variants=("fp16",))


@pytest.mark.parametrize("int8_embedding", [False, True])
def test_rounded_kernels_written_into_the_float_file_equal_a_second_conversion(int8_embedding):
    """`with_kernels` overwrites each kernel's buffer in the converted float file:
    byte for byte the file a conversion with the kernels assigned gives, without
    that conversion."""
    from converters import export_tflite

    model = trained_like(FalconBackbone(**CONFIG), seed=1)
    ids = gptq.default_calibration(CONFIG["vocabulary_size"], (2, 32))
    kernels = gptq.rounded_kernels(model, RECIPES["int4"], ids)
    float_model = export_tflite.convert_fp32(model, 1, 8, int8_embedding)

    def reconvert():
        raise AssertionError("every kernel has a buffer of its own: no conversion needed")

    written = export_tflite.with_kernels(float_model, kernels, reconvert)
    with gptq.assigned(kernels):
        expected = export_tflite.convert_fp32(model, 1, 8, int8_embedding)
    assert written == expected
    assert written != float_model
    # A kernel stored nowhere as itself: the conversion runs, the kernels assigned.
    layer = next(iter(kernels))
    seen = []
    with gptq.assigned({layer: layer.kernel.numpy() * 2}):
        got = export_tflite.with_kernels(
            float_model, {layer: kernels[layer]},
            lambda: seen.append(np.array_equal(layer.kernel.numpy(), kernels[layer])) or "again")
    assert got == "again" and seen == [True]
