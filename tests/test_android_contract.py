"""The Android app's contract constants (FalconContract.java) match
falcon_tf/artifacts/contract.py, and the real causal-LM export (converters/
export_tflite_causal_lm.py) has the signatures and tensors those constants and
its manifest name."""

import importlib.util
import json
import os
import re

import numpy as np
import pytest

from falcon_tf.artifacts import contract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAVA_CONTRACT = os.path.join(ROOT, "android_demo", "core", "src", "main", "java", "falcontf",
                             "core", "FalconContract.java")
# The causal-LM names the app relies on; each must be in both files.
CAUSAL_LM_NAMES = ("PREFILL_PREFIX", "WINDOWED_PREFILL_PREFIX", "DECODE_SIGNATURE", "TOKENS", "INPUT_POS", "MASK", "LOGITS",
                   "CACHE_K_PREFIX", "CACHE_V_PREFIX", "MASK_VALUE", "TOKENIZER_FILE",
                   "MANIFEST_FILE")

_CONSTANT = re.compile(
    r"public\s+static\s+final\s+(String|float|double|int)\s+([A-Z0-9_]+)\s*=\s*"
    r"(\"(?:[^\"\\]|\\.)*\"|[-+0-9.eE]+[fFdD]?)\s*;")


def java_constants(path=JAVA_CONTRACT):
    """{NAME: value} for the `public static final` String and number constants."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    constants = {}
    for kind, name, literal in _CONSTANT.findall(source):
        if kind == "String":
            constants[name] = bytes(literal[1:-1], "utf-8").decode("unicode_escape")
        else:
            constants[name] = float(literal.rstrip("fFdD"))
    return constants


def test_java_constants_match_contract_py():
    java = java_constants()
    missing = [name for name in CAUSAL_LM_NAMES if name not in java]
    assert not missing, f"FalconContract.java lacks {missing}"
    for name, value in java.items():
        assert hasattr(contract, name), f"FalconContract.{name} has no counterpart in contract.py"
        expected = getattr(contract, name)
        if isinstance(expected, float):
            assert np.float32(expected) == np.float32(value), name
        else:
            assert value == expected, (
                f"FalconContract.{name} = {value!r} but falcon_tf/artifacts/contract.py says {expected!r}")


def test_parser_sees_a_drift(tmp_path):
    # The check above can fail: a changed constant is read back as changed.
    with open(JAVA_CONTRACT, encoding="utf-8") as f:
        source = f.read()
    drifted = tmp_path / "FalconContract.java"
    drifted.write_text(source.replace('"input_pos"', '"input_positions"')
                       .replace("-30000.0f", "-1e9f"))
    java = java_constants(str(drifted))
    assert java["INPUT_POS"] == "input_positions" != contract.INPUT_POS
    assert java["MASK_VALUE"] == -1e9 != contract.MASK_VALUE


def check_causal_lm_tflite(path, constants=None):
    """Checks an exported causal-LM .tflite against the app's constants.

    Signatures: `decode` and at least one `prefill_<L>` (and any `decode_<W>`,
    which the app takes below W); each takes tokens int32
    [1, L], input_pos int32 [L], mask float32 [1, 1, L, cache_len] and the caches
    k_0, v_0 … float32 [1, kv_heads, cache_len, head_dim], and returns the same
    caches; the decode signatures also return logits float32 [1, 1, vocab] (a
    prefill returns none). Returns a list of problems (empty: it conforms).
    """
    from ai_edge_litert.interpreter import Interpreter

    c = constants or java_constants()
    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    problems = []
    lengths = {}
    for name in signatures:
        if name == c["DECODE_SIGNATURE"]:
            lengths[name] = 1
        elif re.fullmatch(re.escape(c["DECODE_SIGNATURE"]) + r"_[1-9][0-9]*", name):
            lengths[name] = 1  # decode_<W>: decode over a window; the app uses `decode`
        elif re.fullmatch(re.escape(c["PREFILL_PREFIX"]) + r"[1-9][0-9]*", name):
            lengths[name] = int(name[len(c["PREFILL_PREFIX"]):])
        elif re.fullmatch(re.escape(c["WINDOWED_PREFILL_PREFIX"]) + r"[1-9][0-9]*_[1-9][0-9]*",
                          name):  # a prefill over a window; the app takes it within the window
            lengths[name] = int(name[len(c["WINDOWED_PREFILL_PREFIX"]):].split("_")[0])
        else:
            problems.append(f"unexpected signature {name!r}")
    if c["DECODE_SIGNATURE"] not in signatures:
        problems.append(f"no {c['DECODE_SIGNATURE']!r} signature")
    if not any(n.startswith(c["PREFILL_PREFIX"]) for n in lengths):
        problems.append(f"no {c['PREFILL_PREFIX']}<L> signature")

    shapes, vocabs = {}, set()
    for name, length in lengths.items():
        runner = interpreter.get_signature_runner(name)
        inputs = runner.get_input_details()
        outputs = runner.get_output_details()
        caches = sorted(n for n in inputs if n.startswith((c["CACHE_K_PREFIX"], c["CACHE_V_PREFIX"])))
        layers = len(caches) // 2
        want_caches = []
        for i in range(layers):
            want_caches += [f"{c['CACHE_K_PREFIX']}{i}", f"{c['CACHE_V_PREFIX']}{i}"]
        if not caches or sorted(want_caches) != caches:
            problems.append(f"{name}: cache inputs {caches} are not k_i/v_i pairs for layers 0..n-1")
        want_in = {c["TOKENS"], c["INPUT_POS"], c["MASK"], *caches}
        prefill = name.startswith((c["PREFILL_PREFIX"], c["WINDOWED_PREFILL_PREFIX"]))
        want_out = set(caches) if prefill else {c["LOGITS"], *caches}
        if set(inputs) != want_in:
            problems.append(f"{name}: inputs {sorted(inputs)}, expected {sorted(want_in)}")
            continue
        if set(outputs) != want_out:
            problems.append(f"{name}: outputs {sorted(outputs)}, expected {sorted(want_out)}")
            continue
        cache_shape = tuple(inputs[caches[0]]["shape"])
        cache_len = cache_shape[2] if len(cache_shape) == 4 else None
        vocab = None if prefill else outputs[c["LOGITS"]]["shape"][-1]
        expected = {
            ("in", c["TOKENS"]): (np.int32, (1, length)),
            ("in", c["INPUT_POS"]): (np.int32, (length,)),
            ("in", c["MASK"]): (np.float32, (1, 1, length, cache_len)),
        }
        if not prefill:
            expected[("out", c["LOGITS"])] = (np.float32, (1, length, vocab))
        for cache in caches:
            expected[("in", cache)] = (np.float32, cache_shape)
            expected[("out", cache)] = (np.float32, cache_shape)
        for (side, tensor), (dtype, shape) in expected.items():
            detail = (inputs if side == "in" else outputs)[tensor]
            if detail["dtype"] != dtype or tuple(detail["shape"]) != shape:
                problems.append(f"{name}: {tensor} is {np.dtype(detail['dtype']).name} "
                                f"{[int(d) for d in detail['shape']]}, expected "
                                f"{np.dtype(dtype).name} {[d if d is None else int(d) for d in shape]}")
        if len(cache_shape) != 4 or cache_shape[0] != 1:
            problems.append(f"{name}: caches are {list(cache_shape)}, expected "
                            f"[1, kv_heads, cache_len, head_dim]")
        shapes[name] = (cache_shape, layers)
        if vocab is not None:
            vocabs.add(vocab)
    if len(set(shapes.values())) > 1 or len(vocabs) > 1:
        problems.append(f"signatures disagree on cache shape, vocab or layers: {shapes}, "
                        f"vocabularies {sorted(vocabs)}")
    return problems


def build_tiny_causal_lm(path, names=None, prefill=(4,), cache_len=8, vocab=11, layers=2,
                         kv_heads=1, head_dim=4, head_major=True):
    """A tiny .tflite with the contract's signatures: a stand-in for the causal-LM
    export, computing something cheap from every input so nothing is pruned.
    `head_major=False` lays the caches out [1, cache_len, kv_heads, head_dim],
    as the contract did before they became head-major."""
    tf = pytest.importorskip("tensorflow")
    n = dict(contract.__dict__, **(names or {}))
    cache_names = []
    for i in range(layers):
        cache_names += [f"{n['CACHE_K_PREFIX']}{i}", f"{n['CACHE_V_PREFIX']}{i}"]
    cache_spec = [1, kv_heads, cache_len, head_dim] if head_major else [
        1, cache_len, kv_heads, head_dim]
    embed = tf.constant(np.linspace(-1, 1, vocab * head_dim, dtype=np.float32).reshape(vocab, head_dim))

    def make(length, logits):
        specs = {n["TOKENS"]: tf.TensorSpec([1, length], tf.int32, name=n["TOKENS"]),
                 n["INPUT_POS"]: tf.TensorSpec([length], tf.int32, name=n["INPUT_POS"]),
                 n["MASK"]: tf.TensorSpec([1, 1, length, cache_len], tf.float32, name=n["MASK"])}
        for cache in cache_names:
            specs[cache] = tf.TensorSpec(cache_spec, tf.float32, name=cache)

        @tf.function(input_signature=[specs])
        def step(inputs):
            x = tf.gather(embed, inputs[n["TOKENS"]][0])                      # [L, head_dim]
            onehot = tf.one_hot(inputs[n["INPUT_POS"]], cache_len)          # [L, cache_len]
            out = {}
            for cache in cache_names:
                written = tf.einsum("lc,ld->cd", onehot, x)
                written = written[None, None] if head_major else written[None, :, None]
                tiles = [1, kv_heads, 1, 1] if head_major else [1, 1, kv_heads, 1]
                out[cache] = inputs[cache] + tf.tile(written, tiles)
            if logits:
                scores = tf.reduce_sum(inputs[n["MASK"]], axis=-1)[0, 0]    # [L]
                out[n["LOGITS"]] = (tf.matmul(x, embed, transpose_b=True) + scores[:, None])[None]
            else:  # a prefill: the caches only, every input still read
                mask = tf.reduce_sum(inputs[n["MASK"]])
                out = {k: v + 0.0 * mask for k, v in out.items()}
            return out
        return step

    module = tf.Module()
    functions = {n["DECODE_SIGNATURE"]: make(1, True).get_concrete_function()}
    for length in prefill:
        functions[f"{n['PREFILL_PREFIX']}{length}"] = make(length, False).get_concrete_function()
    saved = os.path.join(os.path.dirname(str(path)), "saved_model_" + os.path.basename(str(path)))
    tf.saved_model.save(module, saved, signatures=functions)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(functions))
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny_lm.tflite", prefill=(4, 8))


def test_conforming_tflite_passes(tiny_lm):
    assert check_causal_lm_tflite(tiny_lm) == []
    from ai_edge_litert.interpreter import Interpreter
    assert set(Interpreter(model_path=str(tiny_lm)).get_signature_list()) == {
        "decode", "prefill_4", "prefill_8"}


def test_misnamed_tensor_is_reported(tmp_path):
    pytest.importorskip("ai_edge_litert")
    path = build_tiny_causal_lm(tmp_path / "bad.tflite", names={"INPUT_POS": "input_positions"})
    problems = check_causal_lm_tflite(path)
    assert problems and all("input_positions" in p for p in problems), problems


def test_caches_laid_out_slot_major_are_reported(tmp_path):
    pytest.importorskip("ai_edge_litert")
    path = build_tiny_causal_lm(tmp_path / "slot_major.tflite", kv_heads=2, head_major=False)
    problems = check_causal_lm_tflite(path)
    # Read as [1, kv_heads, cache_len, head_dim], the caches hold 2 slots, not the mask's 8.
    assert sorted(problems) == [
        "decode: mask is float32 [1, 1, 1, 8], expected float32 [1, 1, 1, 2]",
        "prefill_4: mask is float32 [1, 1, 4, 8], expected float32 [1, 1, 4, 2]"], problems


def test_missing_decode_is_reported(tmp_path):
    pytest.importorskip("ai_edge_litert")
    path = build_tiny_causal_lm(tmp_path / "nodecode.tflite",
                                names={"DECODE_SIGNATURE": "step"}, prefill=(2,))
    problems = check_causal_lm_tflite(path)
    assert "unexpected signature 'step'" in problems
    assert "no 'decode' signature" in problems


# The real export: the tiny random model through the causal-LM exporter, as the
# Android golden files are made (android_demo/fixtures/make_causal_lm_golden.py).

@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    path = os.path.join(ROOT, "android_demo", "fixtures", "make_causal_lm_golden.py")
    spec = importlib.util.spec_from_file_location("make_causal_lm_golden", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    artifact_dir = script.export(str(tmp_path_factory.mktemp("export")))
    with open(os.path.join(artifact_dir, contract.MANIFEST_FILE), encoding="utf-8") as f:
        manifest = json.load(f)
    return artifact_dir, manifest


def test_real_export_passes_the_check(real_export):
    artifact_dir, manifest = real_export
    for variant in manifest["causal_lm"]["variants"].values():
        assert check_causal_lm_tflite(os.path.join(artifact_dir, variant["file"])) == []


def test_real_export_signatures_match_java_constants_and_manifest(real_export):
    from ai_edge_litert.interpreter import Interpreter

    artifact_dir, manifest = real_export
    java = java_constants()
    section = manifest["causal_lm"]
    assert np.float32(section["mask_value"]) == np.float32(java["MASK_VALUE"])
    caches = []
    for i in range(section["num_layers"]):
        caches += [f"{java['CACHE_K_PREFIX']}{i}", f"{java['CACHE_V_PREFIX']}{i}"]
    expected_names = {java["DECODE_SIGNATURE"]} | {
        f"{java['PREFILL_PREFIX']}{n}" for n in section["prefill_lengths"]} | {
        f"{java['DECODE_SIGNATURE']}_{w}" for w in section["decode_windows"]} | {
        f"{java['WINDOWED_PREFILL_PREFIX']}{n}_{w}" for w in section["prefill_windows"]
        for n in section["prefill_lengths"] if n <= w}
    assert section["decode_windows"], "the golden export has a decode window to check"
    assert section["prefill_windows"], "the golden export has a prefill window to check"
    assert set(section["signatures"]) == expected_names
    assert java["TOKENIZER_FILE"] in manifest["tokenizer"]["files"]
    assert os.path.isfile(os.path.join(artifact_dir, java["TOKENIZER_FILE"]))
    for variant in section["variants"].values():
        interpreter = Interpreter(model_path=os.path.join(artifact_dir, variant["file"]))
        signatures = interpreter.get_signature_list()
        assert set(signatures) == expected_names, variant["file"]
        for name, tensors in signatures.items():
            recorded = section["signatures"][name]
            assert set(tensors["inputs"]) == {java["TOKENS"], java["INPUT_POS"], java["MASK"],
                                              *caches} == set(recorded["inputs"]), name
            logits = set() if name.startswith((java["PREFILL_PREFIX"],
                                               java["WINDOWED_PREFILL_PREFIX"])) else {
                java["LOGITS"]}
            assert set(tensors["outputs"]) == {*logits, *caches} == set(
                recorded["outputs"]), name
            runner = interpreter.get_signature_runner(name)
            for side, details in (("inputs", runner.get_input_details()),
                                  ("outputs", runner.get_output_details())):
                for tensor, detail in details.items():
                    spec = recorded[side][tensor]
                    assert [int(d) for d in detail["shape"]] == spec["shape"], (name, tensor)
                    assert np.dtype(detail["dtype"]).name == spec["dtype"], (name, tensor)
