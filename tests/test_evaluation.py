"""Perplexity and greedy agreement (falcon_tf.runtime.evaluation) in every runtime, and
the embedded trained preset's held-out figure."""

import json
import os

import numpy as np
import pytest

from conftest import randomize
from falcon_tf import FalconCausalLM
from falcon_tf.runtime import evaluation

WINDOW, CACHE = 32, 64
# Relative perplexity difference allowed against Keras on the same weights.
TOLERANCE = {"saved_model": 1e-5, "fp32": 1e-5, "fp16": 1e-3, "int8": 2e-2}


def direct_perplexity(lm, ids, window):
    """exp(mean NLL) from the eager Keras logits, window by window, in numpy."""
    nll = []
    for start in range(0, len(ids), window):
        piece = ids[start:start + window]
        if len(piece) < 2:
            continue
        logits = lm({"token_ids": piece[None].astype("int32"),
                     "padding_mask": np.ones((1, len(piece)), "int32")}).numpy()[0]
        logits = logits.astype(np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                    keepdims=True)) - logits.max(-1, keepdims=True)
        nll += [-log_probs[i, piece[i + 1]] for i in range(len(piece) - 1)]
    return float(np.exp(np.mean(nll))), len(nll)


@pytest.fixture(scope="module")
def tiny_lm():
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=CACHE)
    randomize(lm.backbone, seed=3, scale=0.1)
    return lm


def test_keras_perplexity_equals_a_direct_numpy_computation(tiny_lm):
    ids = np.random.default_rng(0).integers(0, 1024, 3 * WINDOW + 9)
    result = evaluation.perplexity(evaluation.keras_scorer(tiny_lm), ids, WINDOW, batch=2)
    expected, count = direct_perplexity(tiny_lm, ids, WINDOW)
    assert result["tokens"] == count == 3 * (WINDOW - 1) + 8
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert result["nll"] == pytest.approx(np.log(expected), rel=1e-5)


def test_uniform_logits_give_the_vocabulary_size():
    ids = np.arange(100) % 7
    result = evaluation.perplexity(lambda rows: np.zeros(rows.shape + (7,), np.float32), ids, 10)
    assert result["perplexity"] == pytest.approx(7.0, rel=1e-12)
    assert result["tokens"] == 90 == evaluation.perplexity_tokens(ids, 10)


def test_bad_arguments_are_named():
    scorer = evaluation.perplexity  # never reached
    with pytest.raises(ValueError, match="`window`"):
        evaluation.windows(np.arange(10), window=1)
    with pytest.raises(ValueError, match="`token_ids`"):
        evaluation.windows(np.zeros((2, 5), int))
    with pytest.raises(ValueError, match="`batch`"):
        evaluation.perplexity(scorer, np.arange(10), 4, batch=0)
    with pytest.raises(ValueError, match="`runtime`"):
        evaluation.evaluate("falcon_tiny_random", runtime="onnx")
    with pytest.raises(ValueError, match="held-out"):
        evaluation.evaluate("falcon_tiny_random", runtime="keras")
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        evaluation.token_nll(np.zeros((3, 4)), [0, 1, 9])


@pytest.fixture(scope="module")
def exported(tiny_lm, tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    from converters.export_saved_model import export_saved_model
    from converters.export_tflite_causal_lm import export_tflite_causal_lm

    out = tmp_path_factory.mktemp("artifacts")
    export_saved_model("falcon_tiny_random", out, model=tiny_lm.backbone,
                       tokenizer=tiny_lm.tokenizer)
    export_tflite_causal_lm("falcon_tiny_random", out, model=tiny_lm.backbone,
                            variants=("fp32", "fp16", "int8"), cache_length=CACHE,
                            prefill_lengths=(8, WINDOW), tokenizer=tiny_lm.tokenizer)
    return out / "falcon_tiny_random"


def test_every_runtime_agrees_with_keras(tiny_lm, exported):
    ids = np.random.default_rng(1).integers(0, 1024, 4 * WINDOW + 5)
    keras = evaluation.perplexity(evaluation.keras_scorer(tiny_lm), ids, WINDOW)
    served, scorer = evaluation.load_runtime(str(exported), "saved_model")
    got = evaluation.perplexity(scorer, ids, WINDOW)
    assert got["tokens"] == keras["tokens"]
    assert got["perplexity"] == pytest.approx(keras["perplexity"], rel=TOLERANCE["saved_model"])
    for variant in ("fp32", "fp16", "int8"):
        lite, scorer = evaluation.load_runtime(str(exported), "tflite", variant)
        got = evaluation.perplexity(scorer, ids, WINDOW)
        assert got["perplexity"] == pytest.approx(keras["perplexity"],
                                                  rel=TOLERANCE[variant]), variant
    # Greedy continuations: the fp32 file's equal Keras's on every prompt.
    prompts = [[tiny_lm.tokenizer.start_token_id] + ids[i * 11:i * 11 + 7].tolist()
               for i in range(3)]
    expected = evaluation.greedy_continuations(tiny_lm, prompts, new_tokens=12)
    lite, _ = evaluation.load_runtime(str(exported), "tflite", "fp32")
    assert evaluation.agreement(expected, evaluation.greedy_continuations(lite, prompts, 12)) \
        == 1.0
    assert evaluation.agreement(expected, [row[::-1] for row in expected]) < 1.0
    with pytest.raises(ValueError, match="`token_ids`"):
        lite.logits(np.zeros(CACHE + 1, int))


def test_evaluate_compares_an_artifact_with_its_keras_preset(tiny_lm, exported, tmp_path):
    tiny_lm.save_to_preset(str(exported / "keras_preset"))
    ids = np.random.default_rng(2).integers(0, 1024, 2 * WINDOW)
    ids[::WINDOW // 2] = tiny_lm.tokenizer.start_token_id  # documents for the prompts
    result = evaluation.evaluate(str(exported), "tflite", "fp32", ids, WINDOW, prompts=3,
                                 new_tokens=8)
    keras = evaluation.perplexity(evaluation.keras_scorer(tiny_lm), ids, WINDOW)
    assert result["keras_perplexity"] == pytest.approx(keras["perplexity"], rel=1e-6)
    assert abs(result["delta"]) <= TOLERANCE["fp32"]
    assert result["greedy_identical"] == 1.0 and result["prompts"] == 3
    with pytest.raises(ValueError, match="`window`"):
        evaluation.evaluate(str(exported), "tflite", "fp32", ids, window=CACHE * 2)


def test_trained_preset_reproduces_its_recorded_heldout_perplexity():
    from falcon_tf import FalconBackbone
    from falcon_tf.checkpoints.handles import embedded_dir

    entry = FalconBackbone.presets["falcon_tiny_trained"]
    directory = embedded_dir(entry)
    with open(os.path.join(directory, "metadata.json")) as f:
        recorded = json.load(f)["heldout_perplexity"]
    ids = evaluation.preset_token_ids("falcon_tiny_trained")
    assert len(ids) == json.load(open(os.path.join(directory, "metadata.json")))[
        "corpus"]["heldout_tokens"]
    lm = FalconCausalLM.from_preset("falcon_tiny_trained", cache_length=recorded["window"])
    result = evaluation.perplexity(evaluation.keras_scorer(lm), ids, recorded["window"])
    assert result["tokens"] == recorded["tokens"]
    assert result["perplexity"] == pytest.approx(recorded["perplexity"], rel=1e-4)
    # Trained, not random: far below the vocabulary size a random model scores.
    assert result["perplexity"] < lm.backbone.vocabulary_size / 20
    calibration = evaluation.preset_token_ids("falcon_tiny_trained",
                                              evaluation.CALIBRATION_FILE)
    assert calibration.ndim == 2 and calibration.max() < lm.backbone.vocabulary_size


@pytest.mark.parametrize("layout", ["head-major", "slot-major"])
def test_saved_model_scorer_builds_caches_in_the_signatures_layout(layout):
    # Head-major (batch, kv, C, d) caches, and the slot-major (batch, C, kv, d)
    # ones of SavedModels exported before them: the scorer's empty caches take
    # the layout the `prefill` signature declares.
    import types

    import tensorflow as tf

    from falcon_tf.runtime.evaluation import saved_model_scorer

    kv, d, vocab = 2, 4, 5
    shape = [None, kv, None, d] if layout == "head-major" else [None, None, kv, d]
    seen = []

    def prefill(tokens, input_pos, kv_cache_k_0, kv_cache_v_0):
        seen.append(tuple(kv_cache_k_0.shape))
        return {"logits": tf.zeros(tuple(tokens.shape) + (vocab,))}

    # As a loaded SavedModel's signature describes itself: keyword inputs only.
    ids = tf.TensorSpec([None, None], tf.int32)
    prefill.structured_input_signature = ((), {
        "tokens": ids, "input_pos": ids, "kv_cache_k_0": tf.TensorSpec(shape, tf.float32),
        "kv_cache_v_0": tf.TensorSpec(shape, tf.float32)})
    logits = saved_model_scorer(types.SimpleNamespace(prefill=prefill))(np.zeros((3, 7), np.int32))
    assert logits.shape == (3, 7, vocab)
    assert seen == [(3, kv, 7, d) if layout == "head-major" else (3, 7, kv, d)]
