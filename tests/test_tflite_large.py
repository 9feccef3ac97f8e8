"""The large-model TFLite route (converters/export_tflite_large.py), forced on tiny
models: pieces converted one at a time, stitched into one file whose buffers sit
past the FlatBuffer, verified against Keras like the small route's files."""

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from conftest import randomize
from test_causal_lm_export import assert_every_projection_int4, graph
from converters import cli, export_tflite_large
from converters.export_tflite import export_tflite
from converters.export_tflite_causal_lm import export_tflite_causal_lm
from falcon_tf import FalconBackbone, FalconCausalLM
from falcon_tf.artifacts import contract

pytest.importorskip("ai_edge_litert")

CACHE, PREFILL, WINDOWS = 64, (8, 16), (32,)
PROMPTS = [[5, 17, 3, 9, 22], [8, 1, 30, 2, 11, 7, 25, 4, 19, 6, 13, 27, 14, 28, 10, 12, 29, 31,
                               33, 40]]
# The small route's tolerances (tests/test_causal_lm_export.py, tests/test_tflite.py).
LOGIT_TOL = 1e-4
COSINE = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.999, "int4": 0.99}
BACKBONE = dict(vocabulary_size=2048, num_layers=2, num_attention_heads=4, hidden_dim=128,
                intermediate_dim=512)
BATCH, SEQ = 2, 16


@pytest.fixture(scope="module")
def forced():
    """Every model counts as large."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_tflite_large, "LARGE_ROUTE_PARAMETERS", 0)
        yield


@pytest.fixture(scope="module")
def causal_lm(forced, tmp_path_factory):
    out = tmp_path_factory.mktemp("large")
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=CACHE)
    randomize(lm.backbone, seed=4, scale=0.1)
    entries = export_tflite_causal_lm("falcon_tiny_random", out, model=lm.backbone,
                                      variants=("fp32", "fp16", "int8", "int4"),
                                      cache_length=CACHE, prefill_lengths=PREFILL,
                                      decode_windows=WINDOWS, tokenizer=lm.tokenizer)
    return lm, out / "falcon_tiny_random", entries


def buffers(path):
    """[(offset, size, inline bytes)] of a file's buffers, and the FlatBuffer's size."""
    from tensorflow.lite.python import schema_py_generated as schema

    data = open(path, "rb").read()
    model = schema.Model.GetRootAsModel(data, 0)
    return [(model.Buffers(i).Offset(), model.Buffers(i).Size(), model.Buffers(i).DataLength())
            for i in range(model.BuffersLength())]


def test_causal_lm_takes_the_large_route_and_matches_keras(causal_lm):
    from ai_edge_litert.interpreter import Interpreter

    lm, artifact, entries = causal_lm
    for variant, entry in entries.items():
        assert entry["route"] == "pieces", variant
        assert entry["parity"]["cosine_vs_keras"] >= COSINE[variant], variant
        assert entry["parity"]["greedy_tokens_equal_keras"], variant
        path = artifact / entry["file"]
        assert os.path.getsize(path) == entry["bytes"]
        signatures = Interpreter(model_path=str(path)).get_signature_list()
        names = contract.cache_names(lm.backbone.num_layers)
        assert sorted(signatures) == ["decode", "decode_32", "prefill_16", "prefill_8",
                                      "windowed_prefill_16_32", "windowed_prefill_8_32"]
        for name, signature in signatures.items():
            assert sorted(signature["inputs"]) == sorted(["tokens", "input_pos", "mask"] + names)
            logits = [] if contract.is_prefill(name) else ["logits"]
            assert sorted(signature["outputs"]) == sorted(logits + names)
        # The stitcher drops what a prefill's pieces compute for logits it does
        # not return: the head, and the last block past its keys and values.
        table = (lm.backbone.vocabulary_size, lm.backbone.hidden_dim)
        for name, (tensors, ops) in graph(path).items():
            fully_connected = [tensors[inputs[1]][1] for op, inputs, _ in ops
                               if op == "FULLY_CONNECTED"]
            head = fully_connected.count(table)
            if contract.is_prefill(name):
                assert head == 0 and len(fully_connected) == 4 * lm.backbone.num_layers - 3, (
                    variant, name, len(fully_connected))
            else:
                assert head == 1 and len(fully_connected) == 4 * lm.backbone.num_layers + 1, (
                    variant, name)
    assert entries["fp32"]["parity"]["max_abs_diff_vs_keras"] <= LOGIT_TOL
    data = json.loads((artifact / "manifest.json").read_text())["causal_lm"]
    assert data["decode_windows"] == list(WINDOWS)
    assert data["prefill_windows"] == list(WINDOWS)


def test_large_integer_variants_compute_with_integer_kernels(causal_lm):
    """int8 and int4 pieces use the causal LM's integer recipes: every
    FULLY_CONNECTED (the tied head too) takes int8/int4 weights with float
    activations, nothing DEQUANTIZEs a weight, and the int8 lookup table and
    the head's int8 weight are the same bytes, stored once."""
    from tensorflow.lite.python import schema_py_generated as schema

    lm, artifact, entries = causal_lm
    vocab, hidden = lm.backbone.vocabulary_size, lm.backbone.hidden_dim
    stored = {variant: sum(size for _, size, _ in buffers(artifact / entries[variant]["file"]))
              for variant in entries}
    for variant in ("int8", "int4"):
        versions = entries[variant]["op_versions"]
        assert versions["per_channel_hybrid"], variant
        assert "DEQUANTIZE" not in versions["ops"], variant
        assert entries[variant]["oldest_runtime"].startswith("ai-edge-litert"), variant
        assert ("INT4" in versions["tensor_types"]) == (variant == "int4")
        data = open(artifact / entries[variant]["file"], "rb").read()
        model = schema.Model.GetRootAsModel(data, 0)
        sizes = [model.Buffers(i).Size() for i in range(model.BuffersLength())]
        assert sizes.count(vocab * hidden) == 1, variant  # the int8 table, once
        assert vocab * hidden * 4 not in sizes, variant  # no float32 table
    # Weight bytes (the graph of five signatures is most of a tiny file).
    assert stored["int8"] < 0.3 * stored["fp32"]
    assert stored["int4"] < stored["int8"]


def test_large_layout_stores_each_weight_once_past_the_flatbuffer(causal_lm):
    lm, artifact, entries = causal_lm
    params = lm.backbone.count_params()
    table = lm.backbone.vocabulary_size * lm.backbone.hidden_dim * 4
    path = artifact / entries["fp32"]["file"]
    found = buffers(path)
    stored = [(offset, size) for offset, size, inline in found if size]
    assert stored and all(inline == 0 for _, _, inline in found)  # no bytes in the FlatBuffer
    first = min(offset for offset, _ in stored)
    assert all(offset % 64 == 0 and offset + size <= os.path.getsize(path)
               for offset, size in stored)
    # The graph comes first, the weights after it: three signatures and the tied
    # head, each weight once (the embedding table's bytes are stored one time).
    assert first < 0.2 * os.path.getsize(path)
    assert sum(size for _, size in stored) <= params * 4 + 64 * 1024
    assert [size for _, size in stored].count(table) == 1
    assert entries["fp32"]["bytes"] < 1.3 * params * 4


def test_large_files_generate_keras_tokens_on_litert(causal_lm):
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.lite.causal_lm import run_steps

    lm, artifact, _ = causal_lm
    max_length = max(map(len, PROMPTS)) + 24
    expected = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    for variant in ("fp32", "int8"):
        lite = LiteLM.from_preset(str(artifact), variant=variant, num_threads=2)
        assert lite.generate(PROMPTS, max_length=max_length, stop_token_ids=None) == expected
    lite = LiteLM.from_preset(str(artifact), variant="fp32")
    logits = run_steps(lite._runners, expected[1], len(PROMPTS[1]))
    full = lm({"token_ids": np.array([expected[1]], "int32"),
               "padding_mask": np.ones((1, len(expected[1])), "int32")}).numpy()[0]
    np.testing.assert_allclose(logits, full[len(PROMPTS[1]) - 1:], atol=LOGIT_TOL)


def test_large_route_gives_the_small_routes_numbers(causal_lm, tmp_path):
    """The same graph in pieces and whole (same cache writer, signatures,
    windows and recipes): the two fp32 files compute the same logits, and the
    two int8 files (GPTQ on the same calibration; the pieces carry its
    activations block by block) nearly so."""
    from ai_edge_litert.interpreter import Interpreter

    from falcon_tf.lite.causal_lm import SignatureRunners, run_steps

    lm, artifact, entries = causal_lm
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_tflite_large, "LARGE_ROUTE_PARAMETERS", 10 ** 12)
        small = export_tflite_causal_lm("small", tmp_path, model=lm.backbone,
                                        variants=("fp32", "int8"), cache_length=CACHE,
                                        prefill_lengths=PREFILL, decode_windows=WINDOWS)
    assert small["fp32"]["route"] == "whole"
    sequence = list(range(1, 30))
    for variant in ("fp32", "int8"):
        got = {}
        for route, path in (("pieces", artifact / entries[variant]["file"]),
                            ("whole", tmp_path / "small" / small[variant]["file"])):
            got[route] = run_steps(SignatureRunners(Interpreter(model_path=str(path))),
                                   sequence, 20)
        if variant == "fp32":
            np.testing.assert_allclose(got["pieces"], got["whole"], atol=1e-5)
        else:
            a, b = got["pieces"].ravel(), got["whole"].ravel()
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.9999
        assert small[variant]["op_versions"] == entries[variant]["op_versions"], variant


def test_backbone_takes_the_large_route_and_matches_keras(forced, tmp_path):
    from falcon_tf.lite import FalconBackbone as LiteBackbone

    model = randomize(FalconBackbone(**BACKBONE), scale=0.05)
    entries = export_tflite("small", tmp_path, model=model, variants=("fp32", "int8", "int4"),
                            batch=BATCH, seq=SEQ)
    rng = np.random.default_rng(5)
    x = {"token_ids": rng.integers(0, BACKBONE["vocabulary_size"], (BATCH, SEQ)).astype("int32"),
         "padding_mask": np.ones((BATCH, SEQ), "int32")}
    x["padding_mask"][0, :3] = 0
    real = x["padding_mask"].astype(bool)
    expected = model(x).numpy()[real].ravel()
    for variant, entry in entries.items():
        assert entry["route"] == "pieces"
        assert entry["parity"]["cosine_vs_keras"] >= COSINE[variant], variant
        got = LiteBackbone.from_preset(str(tmp_path / "small"), variant=variant)(x)[real].ravel()
        assert got @ expected / np.linalg.norm(got) / np.linalg.norm(expected) >= \
            COSINE[variant], variant
    assert entries["fp32"]["parity"]["max_abs_diff_vs_keras"] <= 1e-4
    assert entries["int8"]["bytes"] <= 0.3 * entries["fp32"]["bytes"]  # int8 embedding rows


KILLED = textwrap.dedent("""
    import os, shutil, signal, sys
    from converters import export_tflite_large
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf import FalconBackbone
    export_tflite_large.LARGE_ROUTE_PARAMETERS = 0
    copy = shutil.copyfileobj

    def killed_midway(source, target, length=0):
        target.write(source.read(1000))
        target.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    shutil.copyfileobj = killed_midway
    export_tflite_causal_lm("tiny", sys.argv[1], model=FalconBackbone.from_preset(
        "falcon_tiny_random"), variants=("fp32",), cache_length=32, prefill_lengths=(8,))
""")


def test_an_export_killed_midway_leaves_nothing_visible(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    folder = tmp_path / "tiny" / "tflite"
    assert folder.is_dir()  # it got as far as writing the file
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    assert not (tmp_path / "tiny" / "manifest.json").exists()


def test_cli_exports_a_preset_directory_and_refuses_what_will_not_fit(forced, tmp_path,
                                                                      monkeypatch, capsys):
    preset = tmp_path / "preset"
    randomize(FalconBackbone.from_preset("falcon_tiny_random"), seed=2,
              scale=0.1).save_to_preset(str(preset))
    out = tmp_path / "artifacts"
    args = ["export", "--preset", str(preset), "--format", "tflite", "--task", "causal_lm",
            "--variants", "int4,int8,fp16", "--cache-length", "32", "--prefill-lengths", "8",
            "--int4-projections", "all", "--out", str(out)]
    assert cli.main(args) == 0
    data = json.loads((out / "preset" / "manifest.json").read_text())
    assert sorted(data["causal_lm"]["variants"]) == ["fp16", "int4", "int8"]
    assert {e["route"] for e in data["causal_lm"]["variants"].values()} == {"pieces"}
    # The pieces of --int4-projections all: every projection int4, the head int8 rows.
    int4 = data["causal_lm"]["variants"]["int4"]
    assert int4["int4_projections"] == "all"
    assert int4["parity"]["cosine_vs_keras"] >= COSINE["int4"]
    config = FalconBackbone.from_preset(str(preset)).falcon_config
    assert_every_projection_int4(out / "preset" / int4["file"], config)
    monkeypatch.setattr("converters.export_tflite._total_memory", lambda: 2 ** 20)
    other = tmp_path / "refused"
    assert cli.main(args[:-1] + [str(other)]) == 2
    err = capsys.readouterr().err
    assert "Exporting int4, int8, fp16 of preset" in err and "needs about" in err
    assert "this machine has 0.0 GiB" in err
    assert not other.exists()


@pytest.mark.slow
def test_a_stitched_file_over_2_gib_loads_and_runs_on_litert(tmp_path):
    """Nine 256 MB matmuls stitched into a 2.3 GB file, past the FlatBuffer's
    2 GiB, in the buffer-offset layout. One piece is converted; the others are
    its graph with their own weights written into its weight buffer (each
    weight symmetric, so it does not matter whether the file stores it
    transposed)."""
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    from converters.export_tflite import signatures_converter
    from converters.flatbuffer_stitch import Stitcher, read_piece

    width, count = 8192, 9

    def weight(k):
        a = np.random.default_rng(k).standard_normal((width, width), np.float32)
        a += a.T
        a *= np.float32(0.5 / np.sqrt(width))
        return a

    first = weight(0)
    w = keras.Variable(first)

    @tf.function(input_signature=[tf.TensorSpec((1, width), tf.float32, "hidden")])
    def piece(x):
        return {"hidden": tf.matmul(x, w)}

    with signatures_converter(types.SimpleNamespace(variables=[w]),
                              {"serving_default": piece}) as conv:
        converted = read_piece(conv.convert())
    del w, conv
    held = [b for b in converted.buffers
            if b.data is not None and bytes(b.data) == first.tobytes()]
    assert len(held) == 1
    x = np.random.default_rng(99).standard_normal((1, width)).astype(np.float32)
    expected = x.astype(np.float64)
    with Stitcher(str(tmp_path)) as stitcher:
        for k in range(count):
            value = first if k == 0 else weight(k)
            expected = expected @ value
            held[0].data = np.frombuffer(value.tobytes(), np.uint8)
            stitcher.add(flatbuffer_utils.convert_object_to_bytearray(converted))
            held[0].data = None
            del value
        path = tmp_path / "big.tflite"
        size = stitcher.write(str(path), {"serving_default": ["hidden"]},
                              {"serving_default": ["hidden"]})
    assert size == os.path.getsize(path) > 2 ** 31
    got = Interpreter(model_path=str(path), num_threads=2).get_signature_runner(
        "serving_default")(hidden=x)["hidden"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
