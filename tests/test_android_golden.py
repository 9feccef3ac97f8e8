"""The Android core's golden files stay what Hugging Face tokenizers and the
reference sampler produce: regenerating them must give the committed bytes."""

import importlib.util
import json
import os

import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "android_demo", "core", "src", "test", "resources", "golden")


def load_script():
    path = os.path.join(ROOT, "android_demo", "fixtures", "make_golden.py")
    spec = importlib.util.spec_from_file_location("make_golden", path)
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
