"""The causal LM exported: SavedModel signatures and TFLite prefill/decode files,
each run in its runtime and compared with Keras on the same weights."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import FAMILY, randomize, tiny_kwargs
from converters.export_saved_model import export_saved_model
from converters.export_tflite_causal_lm import export_tflite_causal_lm
from converters import export_tflite
from falcon_tf import FalconBackbone, FalconCausalLM
from falcon_tf.artifacts import contract
from test_gpu_delegate import gpu_available  # noqa: F401  (fixture)

pytest.importorskip("ai_edge_litert")

CACHE, PREFILL, WINDOWS = 64, (8, 16), (32,)
PROMPTS = [[5, 17, 3, 9, 22], [8, 1, 30, 2, 11, 7, 25, 4, 19, 6, 13, 27, 14, 28, 10, 12, 29, 31,
                               33, 40]]  # 5 tokens, and 20 (more than one prefill chunk)
NEW = 32
LOGIT_TOL = 1e-4
COSINE = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.999}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=CACHE)
    randomize(lm.backbone, seed=4, scale=0.1)
    export_saved_model("falcon_tiny_random", out, model=lm.backbone, tokenizer=lm.tokenizer)
    entries = export_tflite_causal_lm("falcon_tiny_random", out, model=lm.backbone,
                                      variants=tuple(COSINE), cache_length=CACHE,
                                      prefill_lengths=PREFILL, tokenizer=lm.tokenizer,
                                      decode_windows=WINDOWS)
    return lm, out / "falcon_tiny_random", entries


def test_saved_model_generate_and_steps_match_keras(exported):
    from falcon_tf.serving import FalconCausalLM as ServingLM

    lm, artifact, _ = exported
    data = json.loads((artifact / "manifest.json").read_text())
    version = data["saved_model"]["versions"][max(data["saved_model"]["versions"], key=int)]
    assert version["parity"]["prefill+decode"]["max_abs_diff_vs_keras"] <= LOGIT_TOL
    assert version["parity"]["generate"]["greedy_tokens_equal_keras"]
    assert {"prefill", "decode", "generate"} <= set(version["signatures"])
    # What the SavedModel holds, read back from it, is the contract's data.
    c = lm.backbone.falcon_config
    sizes = (c.num_layers, c.kv_heads, c.head_dim, c.vocabulary_size)
    assert version["signatures"]["prefill"] == contract.serving_step_signature(None, *sizes)
    assert version["signatures"]["decode"] == contract.serving_step_signature(1, *sizes)
    assert version["signatures"]["generate"] == contract.generate_signature()
    served = ServingLM.from_preset(str(artifact), cache_length=CACHE)
    max_length = max(map(len, PROMPTS)) + NEW
    expected = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    assert served.generate(PROMPTS, max_length=max_length, stop_token_ids=None) == expected
    assert served.generate("the cat", max_length=16) == lm.generate("the cat", max_length=16)
    stop = expected[0][len(PROMPTS[0]) + 3]
    assert served.generate(PROMPTS, max_length=max_length, stop_token_ids=[stop]) == \
        lm.generate(PROMPTS, max_length=max_length, stop_token_ids=[stop])


def test_tflite_files_record_their_parity_and_hold_every_signature(exported):
    from ai_edge_litert.interpreter import Interpreter

    lm, artifact, entries = exported
    data = json.loads((artifact / "manifest.json").read_text())
    section = data["causal_lm"]
    assert section["cache_len"] == CACHE and section["prefill_lengths"] == list(PREFILL)
    assert section["stop_token_ids"] == [lm.tokenizer.end_token_id]
    assert (artifact / contract.TOKENIZER_FILE).is_file()
    for variant, entry in entries.items():
        assert entry["parity"]["cosine_vs_keras"] >= COSINE[variant], variant
        assert entry["parity"]["greedy_tokens_equal_keras"], variant
        signatures = Interpreter(model_path=str(artifact / entry["file"])).get_signature_list()
        # The smallest decode window is the prefill window by default: one windowed
        # prefill per prefill length.
        assert sorted(signatures) == ["decode", "decode_32", "prefill_16", "prefill_8",
                                      "windowed_prefill_16_32", "windowed_prefill_8_32"]
        assert sorted(signatures) == sorted(section["signatures"])
        names = contract.cache_names(lm.backbone.num_layers)
        for name in signatures:
            assert sorted(signatures[name]["inputs"]) == sorted(
                ["tokens", "input_pos", "mask"] + names)
        for name in ("decode", "decode_32"):
            assert sorted(signatures[name]["outputs"]) == sorted(["logits"] + names)
        for name in ("prefill_8", "prefill_16", "windowed_prefill_8_32",
                     "windowed_prefill_16_32"):  # the caches only, as LiteRT-LM's prefill
            assert sorted(signatures[name]["outputs"]) == sorted(names)
            assert sorted(section["signatures"][name]["outputs"]) == sorted(names)
            windowed = contract.windowed_prefill(name)
            if windowed:  # prefill_<L>'s tensors
                assert section["signatures"][name] == section["signatures"][
                    contract.prefill_signature(windowed[0])]
    assert section["decode_windows"] == list(WINDOWS)
    assert section["prefill_windows"] == list(WINDOWS)
    assert entries["fp32"]["parity"]["max_abs_diff_vs_keras"] <= LOGIT_TOL
    # One copy of the weights serves all three signatures.
    assert entries["fp32"]["bytes"] < 1.3 * lm.backbone.count_params() * 4
    assert entries["int8"]["bytes"] < 0.8 * entries["fp32"]["bytes"]
    # DYNAMIC_UPDATE_SLICE and its integer ops are newer than tflite-runtime 2.14's
    # verified set only in the int8 and int4 files (integer FULLY_CONNECTED).
    assert {v: e["oldest_runtime"] for v, e in entries.items()} == {
        "fp32": "tflite-runtime 2.14", "fp16": "tflite-runtime 2.14",
        "int8": export_tflite.oldest_runtime({"ops": {}, "tensor_types": ["INT4"]})}


def graph(path):
    """{signature: (tensors, ops)} of a .tflite: tensors as (name, shape, type,
    has constant data, scale count or, for blockwise scales, "blockwise"), ops as
    (name, input ids, output ids)."""
    from ai_edge_litert import schema_py_generated as schema

    data = open(path, "rb").read()
    model = schema.Model.GetRootAsModel(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    codes = [names[max(model.OperatorCodes(i).BuiltinCode(),
                       model.OperatorCodes(i).DeprecatedBuiltinCode())]
             for i in range(model.OperatorCodesLength())]
    out = {}
    for s in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(s)
        g = model.Subgraphs(signature.SubgraphIndex())
        tensors = []
        for t in range(g.TensorsLength()):
            tensor = g.Tensors(t)
            buffer = model.Buffers(tensor.Buffer())
            q = tensor.Quantization()
            tensors.append((tensor.Name().decode(), tuple(tensor.ShapeAsNumpy().tolist())
                            if tensor.ShapeLength() else (), types[tensor.Type()],
                            buffer.DataLength() > 0 or buffer.Size() > 0,
                            0 if q is None else "blockwise" if q.DetailsType() else
                            q.ScaleLength()))
        ops = [(codes[g.Operators(o).OpcodeIndex()], list(g.Operators(o).InputsAsNumpy()),
                list(g.Operators(o).OutputsAsNumpy())) for o in range(g.OperatorsLength())]
        out[signature.SignatureKey().decode()] = tensors, ops
    return out


def test_caches_are_written_in_place_and_a_windowed_decode_reads_its_window_only(exported):
    lm, artifact, entries = exported
    config = lm.backbone.falcon_config
    full = contract.cache_shape(config.kv_heads, config.head_dim, CACHE)
    assert full == (1, config.kv_heads, CACHE, config.head_dim)  # head-major, slots on axis 2
    for variant, entry in entries.items():
        for signature, (tensors, ops) in graph(artifact / entry["file"]).items():
            windowed = contract.windowed_prefill(signature)
            length = (1 if signature.startswith("decode") else windowed[0] if windowed
                      else int(signature.split("_")[1]))
            window = windowed[1] if windowed else contract.decode_window(signature)
            writes = [op for op in ops if op[0] == "DYNAMIC_UPDATE_SLICE"]
            # One in-place write per cache tensor, of the L new rows.
            assert len(writes) == 2 * config.num_layers, (variant, signature)
            for _, inputs, outputs in writes:
                assert tensors[inputs[0]][1] == full and tensors[outputs[0]][1] == full
                assert tensors[inputs[1]][1] == (1, config.kv_heads, length, config.head_dim)
            windows = set()  # a windowed step's window of each cache
            for name, inputs, outputs in ops:
                if not any(tensors[i][1] == full for i in inputs if i >= 0):
                    continue
                if name == "DYNAMIC_UPDATE_SLICE":
                    continue
                # Nothing else touches every slot: the writer reads no cache
                # row, a windowed step SLICEs its window out, and a
                # whole-cache step multiplies the cache as it lies: no
                # TRANSPOSE of a cache (the layout is attention's own).
                assert name == "STRIDED_SLICE" or (
                    window is None and name == "BATCH_MATMUL"), (variant, signature, name)
                if window is not None:
                    rows = tensors[outputs[0]][1][2]
                    assert rows in (length, window), (variant, signature, name)
                    if name == "STRIDED_SLICE":
                        windows.update(outputs)
            # Nor is a window transposed: attention multiplies it as it lies.
            assert all(name != "TRANSPOSE" or not windows.intersection(inputs)
                       for name, inputs, _ in ops), (variant, signature)


@pytest.fixture(scope="module")
def int4_export(exported, tmp_path_factory):
    lm, _, _ = exported
    out = tmp_path_factory.mktemp("int4")
    entries = export_tflite_causal_lm("tiny", out, model=lm.backbone, variants=("int4",),
                                      cache_length=CACHE, prefill_lengths=PREFILL,
                                      decode_windows=WINDOWS)
    assert entries["int4"]["parity"]["cosine_vs_keras"] >= 0.99
    assert entries["int4"]["oldest_runtime"].startswith("ai-edge-litert")
    assert entries["int4"]["int4_projections"] == "mlp"
    return out / "tiny" / entries["int4"]["file"]


def int4_weights(path, config):
    """{signature: [(dtype, scales) of each projection weight]}, and every
    signature's LM head weight's (dtype, scales), of a causal LM file."""
    projections, heads = {}, set()
    for signature, (tensors, ops) in graph(path).items():
        weights = [tensors[inputs[1]] for name, inputs, _ in ops
                   if name == "FULLY_CONNECTED" and tensors[inputs[1]][3]]
        head = (config.vocabulary_size, config.hidden_dim)
        projections[signature] = [(w[2], w[4]) for w in weights if w[1] != head]
        heads.update((w[2], w[4]) for w in weights if w[1] == head)
    return projections, heads


def assert_every_projection_int4(path, config):
    """Every signature's projection weights are int4 blocks, the head int8 rows."""
    projections, heads = int4_weights(path, config)
    for signature, weights in projections.items():
        assert weights and set(weights) == {("INT4", "blockwise")}, signature
    assert heads == {("INT8", config.vocabulary_size)}


def test_int4_projections_all_stores_every_projection_as_int4(exported, int4_export, tmp_path):
    """int4_projections="all": the attention projections take int4 blocks as
    the MLP's do, the LM head keeps its int8 rows; the file is smaller, verified
    like the default's, and the manifest says which scheme it holds."""
    lm, _, _ = exported
    config = lm.backbone.falcon_config
    entries = export_tflite_causal_lm("tiny", tmp_path, model=lm.backbone, variants=("int4",),
                                      cache_length=CACHE, prefill_lengths=PREFILL,
                                      decode_windows=WINDOWS, int4_projections="all")
    entry = entries["int4"]
    assert entry["int4_projections"] == "all" and entry["route"] == "whole"
    assert entry["parity"]["cosine_vs_keras"] >= 0.99
    assert entry["bytes"] < os.path.getsize(int4_export)
    data = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert data["causal_lm"]["variants"]["int4"]["int4_projections"] == "all"
    assert_every_projection_int4(tmp_path / "tiny" / entry["file"], config)
    # The default's attention projections are int8, one scale per channel.
    default, _ = int4_weights(int4_export, config)
    assert {w[0] for w in default[contract.DECODE_SIGNATURE]} == {"INT4", "INT8"}


def test_int4_projections_is_checked_before_any_work(exported, tmp_path):
    lm, _, _ = exported
    with pytest.raises(ValueError, match="`int4_projections` must be one of mlp, all; "
                                         "received 'attention'"):
        export_tflite_causal_lm("tiny", tmp_path, model=lm.backbone, variants=("int4",),
                                cache_length=CACHE, prefill_lengths=PREFILL,
                                int4_projections="attention")
    assert not list(tmp_path.iterdir())


def test_int8_and_int4_feed_integer_weights_straight_into_fully_connected(exported,
                                                                         int4_export):
    from ai_edge_litert import schema_py_generated as schema

    lm, artifact, entries = exported
    config = lm.backbone.falcon_config
    files = {"int8": artifact / entries["int8"]["file"], "int4": int4_export}
    for variant, path in files.items():
        # The lookup's int8 rows and the LM head's int8 weight: one buffer.
        model = schema.Model.GetRootAsModel(open(path, "rb").read(), 0)
        tables = set()
        for g in range(model.SubgraphsLength()):
            graph_ = model.Subgraphs(g)
            for t in range(graph_.TensorsLength()):
                tensor = graph_.Tensors(t)
                if tensor.ShapeLength() and tuple(tensor.ShapeAsNumpy()) == (
                        config.vocabulary_size, config.hidden_dim):
                    tables.add(tensor.Buffer())
        assert len(tables) == 1, (variant, tables)
        # A weight's per-channel scales, the same in every signature's subgraph,
        # are one table of the FlatBuffer that each of its tensors refers to.
        where = {}
        for g in range(model.SubgraphsLength()):
            graph_ = model.Subgraphs(g)
            for t in range(graph_.TensorsLength()):
                tensor = graph_.Tensors(t)
                q = tensor.Quantization()
                if q is not None and q.ScaleLength() > 1:
                    key = (tensor.Buffer(), q.ScaleAsNumpy().tobytes(), q.QuantizedDimension())
                    where.setdefault(key, []).append(q._tab.Pos)
        assert max(map(len, where.values())) == model.SubgraphsLength(), variant
        assert all(len(set(p)) == 1 for p in where.values()), variant
        for signature, (tensors, ops) in graph(path).items():
            assert "DEQUANTIZE" not in [op[0] for op in ops], (variant, signature)
            weights = [tensors[inputs[1]] for name, inputs, _ in ops
                       if name == "FULLY_CONNECTED" and tensors[inputs[1]][3]]
            # The four projections of each block and the tied LM head; a prefill
            # (no logits) stops at the last block's query/key/value projection.
            if contract.is_prefill(signature):
                assert len(weights) == 4 * (config.num_layers - 1) + 1, (variant, signature)
            else:
                assert len(weights) == 4 * config.num_layers + 1, (variant, signature)
            for name, shape, dtype, _, scales in weights:
                # int8: one scale per output channel; int4: scales per block.
                assert (dtype, scales) in (("INT8", shape[0]), ("INT4", "blockwise")), (
                    variant, name, dtype, scales)
            head = [w for w in weights if w[1] == (config.vocabulary_size, config.hidden_dim)]
            if contract.is_prefill(signature):
                assert not head, (variant, signature)
            else:
                assert len(head) == 1 and head[0][2] == "INT8" and head[0][4] == \
                    config.vocabulary_size  # one scale per embedding row
            mlp = {w[2] for w in weights if config.intermediate_dim in w[1]}
            assert mlp == ({"INT4"} if variant == "int4" else {"INT8"}), variant
            # No float copy of a weight matrix is left (constant float tensors:
            # biases, LayerNorms, scales).
            assert not [t for t in tensors if t[2] in ("FLOAT32", "FLOAT16") and t[3]
                        and len(t[1]) == 2 and min(t[1]) >= config.hidden_dim], (variant,
                                                                                 signature)


def test_tflite_generate_matches_keras(exported):
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.lite.causal_lm import run_steps

    lm, artifact, _ = exported
    lite = LiteLM.from_preset(str(artifact), variant="fp32", num_threads=2)
    max_length = max(map(len, PROMPTS)) + NEW
    expected = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    streamed = []
    got = lite.generate(PROMPTS, max_length=max_length, stop_token_ids=None,
                        on_token=lambda row, token: streamed.append((row, token)))
    assert got == expected
    assert [t for r, t in streamed if r == 1] == expected[1][len(PROMPTS[1]):]
    assert lite.generate("the cat", max_length=16) == lm.generate("the cat", max_length=16)
    # Every decode step's logits after a prefill (a 16-chunk and a padded 8-chunk)
    # against the uncached forward, and the scoring path's at every position.
    sequence = expected[1]
    logits = run_steps(lite._runners, sequence, len(PROMPTS[1]))
    full = lm({"token_ids": np.array([sequence], "int32"),
               "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()[0]
    assert len(logits) == len(sequence) - len(PROMPTS[1]) + 1
    np.testing.assert_allclose(logits, full[len(PROMPTS[1]) - 1:], atol=LOGIT_TOL)
    np.testing.assert_allclose(lite.logits(sequence), full, atol=LOGIT_TOL)


def test_each_decode_window_equals_decode_and_the_interpreter_loop_equals_keras(exported):
    from ai_edge_litert.interpreter import Interpreter

    from falcon_tf.lite.causal_lm import SignatureRunners, _decode, _prefill, run_steps

    lm, artifact, entries = exported
    path = str(artifact / entries["fp32"]["file"])
    interpreter = SignatureRunners(interpreter=Interpreter(model_path=path))
    assert interpreter.decode_windows == list(WINDOWS)
    sequence = lm.generate(PROMPTS[1:], max_length=CACHE, stop_token_ids=None)[0]
    full = lm({"token_ids": np.array([sequence], "int32"),
               "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()[0]
    # The numpy-cache loop (tflite-runtime's) over positions below and past the window.
    np.testing.assert_allclose(run_steps(interpreter, sequence, len(PROMPTS[1])),
                               full[len(PROMPTS[1]) - 1:], atol=LOGIT_TOL)
    caches = _prefill(interpreter, sequence[:24], interpreter.empty_cache())
    for window in WINDOWS:
        for position in (24, window - 1):
            args = (np.array([[sequence[position]]], np.int32), np.array([position], np.int32),
                    np.where(np.arange(CACHE) <= position, 0, contract.MASK_VALUE).astype(
                        np.float32)[None, None, None])
            windowed, _ = interpreter.run(contract.decode_window_signature(window), *args,
                                          dict(caches))
            whole, _ = interpreter.run(contract.DECODE_SIGNATURE, *args, dict(caches))
            np.testing.assert_allclose(windowed, whole, atol=1e-5)
    assert _decode(interpreter, sequence[24], 24, caches)[0].shape == (lm.backbone.vocabulary_size,)


def test_prompt_chunks_take_windowed_prefills_within_the_window_and_prefill_past_it(exported):
    """A 40-token prompt, cache 64, prefill (8, 16), window 32: its first 39
    tokens are windowed_prefill_16_32 at 0 and 16 (each chunk ends by slot
    32), then prefill_8 at 32, whose chunk passes the window; the whole-cache
    runners (as LiteRT-LM runs the file) take prefill_<L> only. Both give
    Keras's logits, and a windowed prefill writes the caches prefill_<L> writes."""
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.lite.causal_lm import _mask, _prefill, run_steps

    lm, artifact, _ = exported
    runners = LiteLM.from_preset(str(artifact), variant="fp32")._runners
    assert runners.prefill_windows == {8: [32], 16: [32]}
    calls, run = [], runners.run
    runners.run = lambda name, tokens, pos, *rest: (calls.append((name, int(pos[0]))),
                                                    run(name, tokens, pos, *rest))[1]
    sequence = np.random.default_rng(3).integers(0, lm.backbone.vocabulary_size, 44).tolist()
    full = lm({"token_ids": np.array([sequence], "int32"),
               "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()[0]
    np.testing.assert_allclose(run_steps(runners, sequence, 40), full[39:], atol=LOGIT_TOL)
    assert calls[:4] == [("windowed_prefill_16_32", 0), ("windowed_prefill_16_32", 16),
                         ("prefill_8", 32), ("decode", 39)]
    calls.clear()
    np.testing.assert_allclose(run_steps(runners.whole_cache(), sequence, 40), full[39:],
                               atol=LOGIT_TOL)
    assert calls[:3] == [("prefill_16", 0), ("prefill_16", 16), ("prefill_8", 32)]
    # After 24 tokens, a chunk ending at the window's edge: both signatures
    # write the same caches (its keys and values, and the later layers' from
    # attention over the 24 earlier slots).
    chunk = np.array([sequence[24:32]], np.int32)
    pos = np.arange(24, 32, dtype=np.int32)
    written = {}
    for name in ("windowed_prefill_8_32", "prefill_8"):
        caches = _prefill(runners.whole_cache(), sequence[:24], runners.empty_cache())
        _, caches = run(name, chunk, pos, _mask(24, 8, CACHE), caches)
        written[name] = {n: b.copy() if isinstance(b, np.ndarray) else b.read(
            int(np.prod(runners.cache_shape)), np.float32) for n, b in caches.items()}
    for n in runners.cache_names:
        np.testing.assert_allclose(written["windowed_prefill_8_32"][n], written["prefill_8"][n],
                                   atol=1e-6)


def test_tflite_loader_checks_before_running(exported, tmp_path):
    from falcon_tf.lite import FalconCausalLM as LiteLM

    _, artifact, _ = exported
    lite = LiteLM.from_preset(str(artifact), variant="fp32")
    lite._runners.run = lambda *a: pytest.fail("the interpreter ran")
    for kwargs, message in [
        (dict(inputs=[list(range(1, 70))]), "more than the cache holds"),
        (dict(inputs=PROMPTS, max_length=CACHE + 1), "beyond the cache's capacity"),
        (dict(inputs=[[]]), "Prompt 0 is empty"),
        (dict(inputs=PROMPTS, stop_token_ids=[1024]), "`stop_token_ids` must be ids"),
        (dict(inputs=[[1, 5000]]), "outside"),
    ]:
        kwargs.setdefault("stop_token_ids", None)
        with pytest.raises(ValueError, match=message):
            lite.generate(**kwargs)
    with pytest.raises(ValueError, match="`variant` 'int4' of the causal LM is not exported"):
        LiteLM.from_preset(str(artifact), variant="int4")



def test_tflite_loader_takes_names_and_shapes_from_the_manifest(exported, tmp_path):
    """The loader's signatures are the manifest's record, checked against the
    file: a record out of step with the file is refused by name, checksums
    or not."""
    import shutil

    from falcon_tf.lite import FalconCausalLM as LiteLM

    _, artifact, _ = exported
    lite = LiteLM.from_preset(str(artifact), variant="fp32")
    recorded = json.loads((artifact / "manifest.json").read_text())["causal_lm"]["signatures"]
    assert lite._runners.signatures == recorded
    assert lite.cache_length == recorded["decode"]["inputs"]["kv_cache_k_0"]["shape"][2] == CACHE
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["causal_lm"]["signatures"]["decode"]["inputs"]["kv_cache_k_0"]["shape"][2] = 2 * CACHE
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"manifest.json: the inputs of signature `decode` "
                                         r"differ between the manifest"):
        LiteLM.from_preset(str(copy), variant="fp32", verify_checksums=False)
    del data["causal_lm"]["signatures"]["prefill_8"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="the manifest records the signatures"):
        LiteLM.from_preset(str(copy), variant="fp32", verify_checksums=False)
    data["causal_lm"]["signatures"] = "damaged"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="field `causal_lm.signatures` must be a object"):
        LiteLM.from_preset(str(copy), variant="fp32", verify_checksums=False)

@pytest.mark.parametrize("variant", ["7b", "40b"])
def test_rotary_and_grouped_variants_export_and_match(variant, tmp_path):
    from falcon_tf.lite import FalconCausalLM as LiteLM

    backbone = randomize(FalconBackbone(**tiny_kwargs(vocabulary_size=37), **FAMILY[variant]),
                         scale=0.2)
    entries = export_tflite_causal_lm("tiny", tmp_path, model=backbone, variants=("fp32",),
                                      cache_length=32, prefill_lengths=(8,))
    assert entries["fp32"]["parity"]["max_abs_diff_vs_keras"] <= LOGIT_TOL
    lite = LiteLM.from_preset(str(tmp_path / "tiny"), variant="fp32")
    lm = FalconCausalLM(backbone, cache_length=32)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert lite.generate(prompts, max_length=30, stop_token_ids=None) == lm.generate(
        prompts, max_length=30, stop_token_ids=None)
    if os.environ.get("FALCON_TF_REQUIRE_GPU") == "1" or entries["fp32"][
            "gpu_fully_accelerated"] is not None:
        assert entries["fp32"]["gpu_fully_accelerated"] is True


def test_a_prompt_near_the_cache_end_is_prefilled_in_chunks_that_fit(tmp_path):
    """The writer puts a chunk's rows at input_pos[0] .. + L - 1 with one
    DYNAMIC_UPDATE_SLICE, which would clamp a chunk running past the cache end
    over earlier slots; so the host takes only chunks that fit and decodes a
    tail too near the end for any. Cache 36, prefill (8, 16): 34 prompt tokens
    are prefill_16 at 0 and 16, then decode at 32 and 33."""
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.lite.causal_lm import run_steps

    backbone = randomize(FalconBackbone(**tiny_kwargs(vocabulary_size=37)), seed=2, scale=0.2)
    export_tflite_causal_lm("tiny", tmp_path, model=backbone, variants=("fp32",),
                            cache_length=36, prefill_lengths=(8, 16))
    runners = LiteLM.from_preset(str(tmp_path / "tiny"), variant="fp32")._runners
    calls, run = [], runners.run
    runners.run = lambda name, tokens, pos, *rest: (calls.append((name, int(pos[0]))),
                                                    run(name, tokens, pos, *rest))[1]
    sequence = np.random.default_rng(0).integers(0, 37, 36).tolist()
    logits = run_steps(runners, sequence, 35)
    assert calls == [("prefill_16", 0), ("prefill_16", 16), ("decode", 32), ("decode", 33),
                     ("decode", 34), ("decode", 35)]
    full = FalconCausalLM(backbone, cache_length=36)({
        "token_ids": np.array([sequence], "int32"),
        "padding_mask": np.ones((1, 36), "int32")}).numpy()[0]
    np.testing.assert_allclose(logits, full[34:], atol=LOGIT_TOL)


GPU_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from falcon_tf.lite import FalconCausalLM
    from falcon_tf.lite.causal_lm import run_steps
    artifact, variant, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cpu = FalconCausalLM.from_preset(artifact, variant=variant)
    gpu = FalconCausalLM.from_preset(artifact, variant=variant, accelerator="gpu")
    a = run_steps(cpu._runners, list(range(1, 40)), 13)
    b = run_steps(gpu._runners, list(range(1, 40)), 13)
    cosine = float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))
    same = cpu.generate(prompts, max_length=40, stop_token_ids=None) == gpu.generate(
        prompts, max_length=40, stop_token_ids=None)
    print(json.dumps({"cosine": cosine, "same_tokens": same,
                      "tensorflow_loaded": "tensorflow" in sys.modules}))
""")


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_gpu_variants_run_every_signature_on_the_gpu(exported, gpu_available,  # noqa: F811
                                                     variant, tmp_path):
    _, artifact, entries = exported
    assert entries[variant]["gpu_fully_accelerated"] is True
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    proc = subprocess.run([sys.executable, "-c", GPU_CHILD, str(artifact), variant,
                           json.dumps(PROMPTS)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cosine"] >= 0.999
    assert result["same_tokens"]
    assert not result["tensorflow_loaded"]


def test_cli_generate_streams_the_same_text_on_every_runtime(exported, capsys):
    import io

    from converters import cli

    lm, artifact, _ = exported
    expected = "the cat" + lm.generate("the cat", max_length=20, strip_prompt=True)
    for runtime in ("saved_model", "tflite"):
        out = io.StringIO()
        text = cli.generate(str(artifact), "the cat", runtime=runtime, max_length=20, out=out)
        assert text == expected, runtime
        assert out.getvalue() == expected + "\n"
    assert cli.main(["generate", "--preset", str(artifact), "--runtime", "tflite", "--prompt",
                     "the cat", "--max-length", "20"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert cli.main(["generate", "--preset", str(artifact), "--runtime", "tflite", "--prompt",
                     "x", "--variant", "int4"]) == 2
    assert "'int4' of the causal LM is not exported" in capsys.readouterr().err


LOADER_IN_OTHER_ENV = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import importlib.util
    from falcon_tf.lite import FalconCausalLM
    artifact, variants, prompts, max_length = sys.argv[2], json.loads(sys.argv[3]), \\
        json.loads(sys.argv[4]), int(sys.argv[5])
    out = {v: FalconCausalLM.from_preset(artifact, variant=v).generate(
        prompts, max_length=max_length, stop_token_ids=None) for v in variants}
    import numpy
    print(json.dumps({"tokens": out, "numpy": numpy.__version__,
                      "tflite_runtime": "tflite_runtime" in sys.modules,
                      "ai_edge_litert": "ai_edge_litert" in sys.modules,
                      "tensorflow_installed": importlib.util.find_spec("tensorflow") is not None}))
""")


def run_lite_lm_in(python, artifact, variants, max_length):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [python, "-c", LOADER_IN_OTHER_ENV, repo, str(artifact), json.dumps(variants),
         json.dumps(PROMPTS), str(max_length)], capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_variants_claiming_tflite_runtime_2_14_generate_on_it(exported, tflite_runtime_2_14):
    lm, artifact, entries = exported
    claimed = [v for v, e in entries.items() if e["oldest_runtime"] == "tflite-runtime 2.14"]
    assert set(claimed) == {"fp32", "fp16"}
    max_length = max(map(len, PROMPTS)) + 12
    result = run_lite_lm_in(tflite_runtime_2_14, artifact, claimed, max_length)
    assert result["tflite_runtime"] and not result["ai_edge_litert"]
    assert result["numpy"].startswith("1.")
    expected = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    for variant in claimed:
        assert result["tokens"][variant] == expected, variant


@pytest.mark.slow
def test_lite_causal_lm_runs_without_tensorflow(exported, litert_only):
    lm, artifact, _ = exported
    max_length = max(map(len, PROMPTS)) + 12
    result = run_lite_lm_in(litert_only, artifact, ["fp32"], max_length)
    assert result["ai_edge_litert"] and not result["tensorflow_installed"]
    assert result["tokens"]["fp32"] == lm.generate(PROMPTS, max_length=max_length,
                                                   stop_token_ids=None)


# Trained-like weights (tests/trained_like.py) at the TFLite test's shape, three
# draws: logit cosine of a prefill plus 8 decode steps against Keras. Measured
# with integer compute and GPTQ rounding: int8 0.99940 / 0.99919 / 0.99901, int4
# 0.99701 / 0.99713 / 0.99494.


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_variants_meet_their_targets_on_trained_like_weights(seed, tmp_path):
    from trained_like import SHAPE, trained_like

    model = trained_like(FalconBackbone(**SHAPE), seed=seed)
    entries = export_tflite_causal_lm("q", tmp_path, model=model, variants=("int8", "int4"),
                                      cache_length=64, prefill_lengths=(8, 32))
    print(f"seed {seed}: " + ", ".join(f"{v} {e['parity']['cosine_vs_keras']:.5f}"
                                       for v, e in entries.items()))
    assert entries["int8"]["parity"]["cosine_vs_keras"] >= 0.999
    assert entries["int4"]["parity"]["cosine_vs_keras"] >= 0.99
    assert entries["int8"]["parity"]["greedy_tokens_equal_keras"]
