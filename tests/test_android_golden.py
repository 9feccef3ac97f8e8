"""The Android core's golden files stay what Hugging Face tokenizers, the
reference sampler and the real causal-LM export produce: regenerating them must
give the committed files (the causal LM's logits within 1e-5)."""

import base64
import hashlib
import importlib.util
import json
import os

import numpy as np

import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "android_demo", "core", "src", "test", "resources", "golden")
CAUSAL_LM = os.path.join(GOLDEN, "causal_lm")
LOGITS_ATOL = 1e-5


def load_script(name="make_golden"):
    path = os.path.join(ROOT, "android_demo", "fixtures", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def rendered(script):
    return script.render()


def committed(name):
    with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
        return f.read()


def test_every_golden_file_is_committed_and_current(rendered):
    assert sorted(rendered) == sorted(n for n in os.listdir(GOLDEN) if n.endswith(".json"))
    for name, text in rendered.items():
        assert committed(name) == text, (
            f"{name} differs from what android_demo/fixtures/make_golden.py writes; run it "
            f"and commit the result.")


def test_committed_tokenizers_give_the_committed_ids():
    # Independent of training: the committed tokenizer.json files, loaded by HF
    # tokenizers, still encode the corpus to the ids the Java tests expect.
    cases = json.loads(committed("tokenizer_cases.json"))
    assert len(cases["texts"]) > 20
    assert "" in cases["texts"] and any("<|endoftext|>" in t for t in cases["texts"])
    for name, expected in cases["tokenizers"].items():
        tokenizer = Tokenizer.from_str(committed(expected["file"]))
        for text, ids, decoded in zip(cases["texts"], expected["ids"], expected["decoded"]):
            assert tokenizer.encode(text, add_special_tokens=False).ids == ids, (name, text)
            assert tokenizer.decode(ids, skip_special_tokens=False) == decoded
    eot = Tokenizer.from_str(committed("tokenizer_byte_level.json")).token_to_id("<|endoftext|>")
    special_case = cases["texts"].index("Prompt<|endoftext|>Next document")
    assert eot in cases["tokenizers"]["byte_level"]["ids"][special_case]


def test_splitmix64_matches_its_published_reference(script):
    # Known first outputs of SplitMix64 seeded with 0 (Vigna's reference C code).
    rng = script.SplitMix64(0)
    assert [rng.next() for _ in range(3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    rng = script.SplitMix64(0)
    value = rng.next_double()
    assert value == (0xE220A8397B1DCDAF >> 11) / 2.0 ** 53 and 0.0 <= value < 1.0


def test_sampler_reference_behaves(script):
    logits = [0.0, 3.0, 1.0, 3.0, -2.0]
    rng = script.SplitMix64(1)
    assert script.sample(logits, 0.0, 0, 1.0, rng) == 1  # first of the tied maxima
    # top_k=1 and a tiny top_p are greedy whatever the draw.
    for seed in range(20):
        assert script.sample(logits, 1.0, 1, 1.0, script.SplitMix64(seed)) == 1
        assert script.sample(logits, 1.0, 0, 1e-9, script.SplitMix64(seed)) == 1
    # top_k=2 draws only among the two best; a hot temperature reaches the rest.
    drawn = {script.sample(logits, 1.0, 2, 1.0, script.SplitMix64(s)) for s in range(200)}
    assert drawn == {1, 3}
    drawn = {script.sample(logits, 5.0, 0, 1.0, script.SplitMix64(s)) for s in range(400)}
    assert drawn == {0, 1, 2, 3, 4}


def test_sampling_cases_cover_stopping(rendered):
    data = json.loads(rendered["sampling_cases.json"])
    by_name = {}
    for case in data["cases"]:
        by_name.setdefault(case["name"], []).append(case)
    greedy_stop = [c for c in by_name["greedy"] if c["stop_token_ids"]][0]
    assert greedy_stop["expected"][-1] in greedy_stop["stop_token_ids"]
    assert len(greedy_stop["expected"]) < len(data["logits"])
    # Different seeds or settings draw different sequences (the cases are not all greedy).
    assert len({tuple(c["expected"]) for c in data["cases"]}) > 4


# The causal-LM golden files: the real export, run by falcon_tf.lite's host loop.

def committed_causal_lm(name):
    with open(os.path.join(CAUSAL_LM, name), encoding="utf-8") as f:
        return f.read()


def logits_row(call, vocab):
    return np.frombuffer(base64.b64decode(call["logits"]), "<f4").reshape(vocab)


def test_causal_lm_golden_is_self_consistent():
    # Without regenerating: the manifest describes the committed tokenizer.json, the
    # prefills feed the prompt but its last token and return no logits, the decodes
    # (decode_32 below slot 32, decode past it) feed that token then the generated
    # ids at the following positions, the prefills of chunks that end by slot 32 run
    # windowed_prefill_<L>_32 (the others prefill_<L>), and each
    # generated id is the first maximum of the logits row recorded for it (greedy).
    manifest = json.loads(committed_causal_lm("manifest.json"))
    data = json.loads(committed_causal_lm("generation.json"))
    tokenizer_bytes = committed_causal_lm("tokenizer/tokenizer.json").encode("utf-8")
    entry = manifest["tokenizer"]["files"]["tokenizer/tokenizer.json"]
    assert entry == {"sha256": hashlib.sha256(tokenizer_bytes).hexdigest(),
                     "bytes": len(tokenizer_bytes)}
    vocab = manifest["causal_lm"]["vocabulary_size"]
    assert data["vocabulary_size"] == vocab
    for case in data["cases"]:
        calls, prompt, generated = case["calls"], case["prompt"], case["generated"]
        prefills = [c for c in calls if c["signature"].startswith(("prefill_",
                                                                  "windowed_prefill_"))]
        for c in prefills:
            length, end = len(c["tokens"]), c["input_pos"][0] + len(c["tokens"])
            assert c["signature"] == (f"windowed_prefill_{length}_32" if end <= 32
                                      else f"prefill_{length}"), case["name"]
        assert all(c["logits"] is None for c in prefills), case["name"]
        fed = [t for c in prefills for t, p in zip(c["tokens"], c["input_pos"])
               if p < len(prompt) - 1]
        assert fed == prompt[:-1], case["name"]
        decodes = calls[len(prefills):]
        assert [c["tokens"][0] for c in decodes] == prompt[-1:] + generated[:-1], case["name"]
        assert [c["input_pos"][0] for c in decodes] == list(
            range(len(prompt) - 1, len(prompt) - 1 + len(decodes))), case["name"]
        assert [c["signature"] for c in decodes] == [
            "decode_32" if c["input_pos"][0] < 32 else "decode" for c in decodes], case["name"]
        drawn = [int(np.argmax(logits_row(c, vocab))) for c in calls if c["logits"]]
        assert drawn == generated, case["name"]


@pytest.fixture(scope="module")
def causal_lm_rendered():
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    return load_script("make_causal_lm_golden").render()


def _files(node, out):
    """Every {file, sha256, bytes} entry and every path -> {sha256, bytes} listing,
    wherever it sits: what Manifest.collectFiles gathers for its checksum checks."""
    if isinstance(node, dict):
        if isinstance(node.get("file"), str) and "sha256" in node:
            out[node["file"]] = (node["sha256"], node.get("bytes"))
        for key, value in node.items():
            if isinstance(value, dict) and "sha256" in value and "file" not in value:
                out[key] = (value["sha256"], value.get("bytes"))
            else:
                _files(value, out)
    elif isinstance(node, list):
        for value in node:
            _files(value, out)
    return out


def _java_relevant(manifest):
    """The fields android_demo's Manifest.java reads, and nothing else: what this
    machine's exporter recorded about itself (times, tool versions, parity, whether
    a GPU driver was there to probe) cannot change what the app sees."""
    lm = manifest["causal_lm"]
    read = ("cache_len", "num_layers", "kv_heads", "head_dim", "vocabulary_size", "mask_value",
            "prefill_lengths", "decode_windows", "prefill_windows", "signatures",
            "stop_token_ids", "start_token_id")
    return {
        "format_version": manifest.get("format_version"),
        "preset": manifest.get("preset"),
        "tokenizer": manifest.get("tokenizer"),
        "causal_lm": {key: lm.get(key) for key in read},
        "variant_files": {name: v["file"] for name, v in lm["variants"].items()},
        "files": _files(manifest, {}),
    }


def test_causal_lm_golden_is_current(causal_lm_rendered):
    assert sorted(causal_lm_rendered) == ["generation.json", "manifest.json",
                                          "tokenizer/tokenizer.json"]
    assert causal_lm_rendered["tokenizer/tokenizer.json"] == committed_causal_lm(
        "tokenizer/tokenizer.json")
    assert _java_relevant(json.loads(causal_lm_rendered["manifest.json"])) == _java_relevant(
        json.loads(committed_causal_lm("manifest.json"))), (
        "the exporter's manifest changed; run android_demo/fixtures/make_causal_lm_golden.py")
    fresh = json.loads(causal_lm_rendered["generation.json"])
    old = json.loads(committed_causal_lm("generation.json"))
    vocab = old["vocabulary_size"]
    assert {k: v for k, v in fresh.items() if k != "cases"} == {
        k: v for k, v in old.items() if k != "cases"}
    assert [c["name"] for c in fresh["cases"]] == [c["name"] for c in old["cases"]]
    for new_case, old_case in zip(fresh["cases"], old["cases"]):
        name = new_case["name"]
        assert {k: v for k, v in new_case.items() if k != "calls"} == {
            k: v for k, v in old_case.items() if k != "calls"}, name
        assert len(new_case["calls"]) == len(old_case["calls"]), name
        for i, (a, b) in enumerate(zip(new_case["calls"], old_case["calls"])):
            assert {k: v for k, v in a.items() if k != "logits"} == {
                k: v for k, v in b.items() if k != "logits"}, (name, i)
            if b["logits"] is not None:
                np.testing.assert_allclose(logits_row(a, vocab), logits_row(b, vocab),
                                           rtol=0, atol=LOGITS_ATOL, err_msg=f"{name} call {i}")
