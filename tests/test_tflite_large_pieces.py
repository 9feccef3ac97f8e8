"""The large-model route's pieces (converters/export_tflite_large.py) on tiny
models: the block template, conversions in a child process, float16 casting."""

import subprocess

import numpy as np
import pytest

from conftest import randomize
from converters import export_tflite_large
from falcon_tf import FalconBackbone, FalconCausalLM

CACHE, PREFILL, WINDOWS = 64, (8, 16), (32,)
BACKBONE = dict(vocabulary_size=2048, num_layers=2, num_attention_heads=4, hidden_dim=128,
                intermediate_dim=512)

pytest.importorskip("ai_edge_quantizer")


def test_blocks_after_the_first_reuse_its_graph_even_with_untrained_weights():
    """A model fresh from its initializers (zero biases, unit LayerNorm gains)
    still gets a block template; a block written through it holds the same
    buffers as its own conversion (weights drawn at random, so that nothing
    repeats in either file)."""
    lm = FalconCausalLM(FalconBackbone(**BACKBONE), cache_length=CACHE)
    pieces, _, _ = export_tflite_large.causal_lm_pieces(lm, CACHE, PREFILL, WINDOWS)
    first, second = pieces[1], pieces[2]
    assert not np.any(second.block.variables[1].numpy())  # an untrained bias: zeros
    template = export_tflite_large.BlockTemplate.make(first)
    assert template is not None
    randomize(lm.backbone, seed=3, scale=0.1)

    assert contents(template.piece(second)) == contents(export_tflite_large._convert(second))


def contents(data):
    """A converted piece's tensor buffers (the metadata names the conversion)."""
    from converters.flatbuffer_stitch import read_piece

    model = read_piece(data)
    metadata = {m.buffer for m in model.metadata or []}
    return [b"" if b.data is None else bytes(b.data) for i, b in enumerate(model.buffers)
            if i not in metadata]


def test_large_pieces_convert_in_a_child_process_to_the_same_file(monkeypatch):
    lm = FalconCausalLM(randomize(FalconBackbone(**BACKBONE), seed=5, scale=0.1),
                        cache_length=CACHE)
    pieces, _, _ = export_tflite_large.causal_lm_pieces(lm, CACHE, PREFILL, WINDOWS)
    head = pieces[-1]
    assert export_tflite_large._weight_bytes(head) == (BACKBONE["vocabulary_size"] + 2) * \
        BACKBONE["hidden_dim"] * 4  # the table and the final LayerNorm
    here = export_tflite_large._convert(head)
    children = []
    run = subprocess.run
    monkeypatch.setattr(export_tflite_large.subprocess, "run",
                        lambda *a, **k: children.append(a) or run(*a, **k))
    monkeypatch.setattr(export_tflite_large, "CHILD_CONVERSION_BYTES", 0)
    assert contents(export_tflite_large._convert(head)) == contents(here)
    assert len(children) == 1


def test_float16_casting_with_numpys_comparison_writes_the_same_file():
    """`export_tflite.quantize` swaps ai-edge-quantizer's array comparison for
    numpy's (speed); the quantized file is byte for byte the library's own."""
    import contextlib
    import io

    from ai_edge_quantizer import qtyping, quantizer

    from converters import export_tflite

    lm = FalconCausalLM(randomize(FalconBackbone(**BACKBONE), seed=6, scale=0.1),
                        cache_length=CACHE)
    pieces, _, _ = export_tflite_large.causal_lm_pieces(lm, CACHE, PREFILL, WINDOWS)
    data = export_tflite_large._convert(pieces[1])
    recipe = export_tflite.CAUSAL_LM_RECIPES["fp16"]
    own = qtyping._compare_array_or_none
    with contextlib.redirect_stdout(io.StringIO()):
        expected = bytes(quantizer.Quantizer(data, recipe).quantize().quantized_model)
    assert export_tflite.quantize(data, "fp16", export_tflite.CAUSAL_LM_RECIPES) == expected
    assert qtyping._compare_array_or_none is own  # put back


def test_the_stitched_graph_keeps_no_view_of_a_piece(tmp_path):
    """Unpacked tensors and operators hold numpy views of their piece's bytes
    (shapes, scales, options); kept in the stitched graph, one view kept the
    whole piece, weights included, until the file was written (~0.1 GiB per
    full-size block). Everything the graph keeps owns its memory."""
    from converters.flatbuffer_stitch import Stitcher

    lm = FalconCausalLM(randomize(FalconBackbone(**BACKBONE), seed=7, scale=0.1),
                        cache_length=CACHE)
    pieces, _, _ = export_tflite_large.causal_lm_pieces(lm, CACHE, PREFILL, WINDOWS)
    views = []

    def walk(obj, path):
        for key, value in vars(obj).items():
            if isinstance(value, np.ndarray):
                if value.base is not None:
                    views.append(f"{path}.{key}")
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if hasattr(item, "__dict__"):
                        walk(item, f"{path}.{key}[{i}]")
            elif hasattr(value, "__dict__"):
                walk(value, f"{path}.{key}")

    with Stitcher(str(tmp_path)) as stitcher:
        for piece in pieces[:2]:
            stitcher.add(export_tflite_large._convert(piece))
        for name, graph in stitcher._graphs.items():
            walk(graph, name)
        for code in stitcher._opcodes:
            walk(code, "opcode")
    assert not views, views[:5]
