"""FalconCausalLM: cached generation against keras-hub and transformers on the same weights."""

import numpy as np
import pytest

from conftest import FAMILY, randomize, tiny_kwargs
from falcon_tf import FalconBackbone, FalconCausalLM, FalconTokenizer
from falcon_tf.model.attention_bias import causal_cache_mask
from falcon_tf.runtime.samplers import Sampler

NEW_TOKENS = 32
PROMPTS = [[5, 17, 3, 9, 22], [8, 1, 30, 2, 11, 7, 25, 4, 19]]  # two lengths
LOGIT_TOL = 1e-4


def greedy_by_recomputing(lm, row, max_length):
    """Greedy decoding with no cache: the whole sequence through the forward each step."""
    seq = list(row)
    while len(seq) < max_length:
        logits = lm({"token_ids": np.array([seq], "int32"),
                     "padding_mask": np.ones((1, len(seq)), "int32")}).numpy()
        seq.append(int(logits[0, -1].argmax()))
    return seq


@pytest.fixture(scope="module", params=sorted(FAMILY))
def lm(request):
    backbone = randomize(FalconBackbone(**tiny_kwargs(vocabulary_size=37),
                                        **FAMILY[request.param]), scale=0.2)
    return FalconCausalLM(backbone, cache_length=64)


def test_cached_steps_match_the_uncached_forward(lm):
    """Prefill then decode, step by step: logits equal the full forward's."""
    row = PROMPTS[1]
    tf = pytest.importorskip("tensorflow")
    caches = lm.empty_cache(1, 32)
    positions = np.arange(len(row), dtype="int32")[None]
    logits, caches = lm.call_with_cache(tf.constant([row], tf.int32), positions,
                                        causal_cache_mask(positions, 32), caches)
    sequence = list(row)
    full = lm({"token_ids": np.array([sequence], "int32"),
               "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()
    np.testing.assert_allclose(logits.numpy(), full, atol=LOGIT_TOL)
    for step in range(6):
        token = int(full[0, -1].argmax())
        sequence.append(token)
        position = np.array([[len(sequence) - 1]], "int32")
        logits, caches = lm.call_with_cache(tf.constant([[token]], tf.int32), position,
                                            causal_cache_mask(position, 32), caches)
        full = lm({"token_ids": np.array([sequence], "int32"),
                   "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()
        np.testing.assert_allclose(logits.numpy()[0, 0], full[0, -1], atol=LOGIT_TOL)



def test_the_cached_forward_runs_the_backbones_one_decoder_stack(lm, monkeypatch):
    """The decoder is written once: the cached forward (generate, the causal-LM
    exporters) and the whole-sequence forward both go through
    `backbone.decoder_stack`, each block once."""
    tf = pytest.importorskip("tensorflow")
    from falcon_tf.model import backbone as backbone_module

    calls = []
    stack = backbone_module.decoder_stack

    def counting(x, blocks, final_layernorm, run_block):
        calls.append([block.name for block in blocks])
        return stack(x, blocks, final_layernorm, run_block)

    monkeypatch.setattr(backbone_module, "decoder_stack", counting)
    row = PROMPTS[0]
    positions = np.arange(len(row), dtype="int32")[None]
    lm.call_with_cache(tf.constant([row], tf.int32), positions,
                       causal_cache_mask(positions, 16), lm.empty_cache(1, 16))
    lm.backbone.forward(tf.constant([row], tf.int32), tf.ones((1, len(row)), tf.int32))
    names = [block.name for block in lm.backbone.transformer_layers]
    assert calls == [names, names]

def test_batched_generate_equals_one_prompt_at_a_time_and_recomputing(lm):
    max_length = max(map(len, PROMPTS)) + NEW_TOKENS
    batched = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    for row, got in zip(PROMPTS, batched):
        assert len(got) == max_length
        assert got[:len(row)] == row
        assert got == lm.generate([row], max_length=max_length, stop_token_ids=None)[0]
    assert batched[0][:20] == greedy_by_recomputing(lm, PROMPTS[0], 20)


def test_matches_keras_hub_generate(keras_hub, tmp_path):
    kwargs = tiny_kwargs(vocabulary_size=37)
    reference_backbone = randomize(keras_hub.models.FalconBackbone(**kwargs), scale=0.2)
    reference_backbone.save_to_preset(str(tmp_path / "preset"))
    reference = keras_hub.models.FalconCausalLM(backbone=reference_backbone, preprocessor=None)
    reference.compile(sampler="greedy")  # keras-hub's default is top_k
    ours = FalconCausalLM.from_preset(str(tmp_path / "preset"), cache_length=64)
    max_length = max(map(len, PROMPTS)) + NEW_TOKENS
    ids = np.zeros((2, max_length), "int32")
    mask = np.zeros((2, max_length), bool)
    for i, row in enumerate(PROMPTS):
        ids[i, :len(row)], mask[i, :len(row)] = row, True
    expected = reference.generate({"token_ids": ids, "padding_mask": mask},
                                  stop_token_ids=None)
    got = ours.generate({"token_ids": ids, "padding_mask": mask}, max_length=max_length,
                        stop_token_ids=None)
    np.testing.assert_array_equal(got["token_ids"], np.asarray(expected["token_ids"]))
    np.testing.assert_array_equal(got["padding_mask"], np.asarray(expected["padding_mask"]))


@pytest.mark.parametrize("variant", ["rw", "7b", "40b"])
def test_matches_transformers_greedy_generate(variant, tmp_path):
    torch = pytest.importorskip("torch")
    from test_huggingface import hf_model

    model = hf_model(variant, seed=3)
    model.save_pretrained(tmp_path)
    ours = FalconCausalLM.from_preset(str(tmp_path), cache_length=64)
    width = max(map(len, PROMPTS))
    ids = np.zeros((2, width), "int64")
    mask = np.zeros((2, width), "int64")
    for i, row in enumerate(PROMPTS):  # transformers pads on the left
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids),
                             attention_mask=torch.from_numpy(mask), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             pad_token_id=0, eos_token_id=None).numpy()
    got = ours.generate(PROMPTS, max_length=width + NEW_TOKENS, stop_token_ids=None)
    for i, row in enumerate(PROMPTS):
        assert got[i][:len(row) + NEW_TOKENS] == row + out[i, width:].tolist(), variant


def test_stop_tokens_end_each_row(lm):
    free = lm.generate(PROMPTS, max_length=30, stop_token_ids=None)
    stop = free[0][len(PROMPTS[0]) + 2]  # row 0's third new token
    got = lm.generate(PROMPTS, max_length=30, stop_token_ids=[stop])
    first = free[0].index(stop, len(PROMPTS[0]))
    assert got[0] == free[0][:first + 1]
    generated = free[1][len(PROMPTS[1]):]
    end = (generated.index(stop) + len(PROMPTS[1]) + 1) if stop in generated else 30
    assert got[1] == free[1][:end]
    padded = lm.generate({"token_ids": np.array([PROMPTS[0] + [0] * 4]),
                          "padding_mask": np.array([[1] * 5 + [0] * 4])},
                         max_length=30, stop_token_ids=[stop])
    assert padded["token_ids"].shape == (1, 30)
    assert padded["padding_mask"].sum() == len(got[0])
    assert padded["token_ids"][0, :len(got[0])].tolist() == got[0]
    assert not padded["token_ids"][0, len(got[0]):].any()


def test_seeded_sampling_repeats_and_differs_across_seeds(lm):
    for sampler in (Sampler("top_k", k=5), Sampler("top_p", p=0.9), "temperature"):
        a = lm.generate(PROMPTS, max_length=20, sampler=sampler, seed=7, stop_token_ids=None)
        b = lm.generate(PROMPTS, max_length=20, sampler=sampler, seed=7, stop_token_ids=None)
        c = lm.generate(PROMPTS, max_length=20, sampler=sampler, seed=8, stop_token_ids=None)
        assert a == b
        assert a != c
    # top_k with k=1 is greedy whatever the seed.
    assert lm.generate(PROMPTS, max_length=20, sampler=Sampler("top_k", k=1), seed=3,
                       stop_token_ids=None) == lm.generate(PROMPTS, max_length=20,
                                                           stop_token_ids=None)


def test_stream_yields_the_generated_tokens(lm):
    steps = list(lm.stream(PROMPTS, max_length=20, stop_token_ids=None))
    full = lm.generate(PROMPTS, max_length=20, stop_token_ids=None)
    assert len(steps) == 20 - min(map(len, PROMPTS))
    streamed_row0 = [int(s[0]) for s in steps[:20 - len(PROMPTS[0])]]
    assert full[0][len(PROMPTS[0]):] == streamed_row0


def test_strings_in_strings_out():
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=64)
    assert isinstance(lm.tokenizer, FalconTokenizer)
    text = lm.generate("the cat", max_length=12)
    assert isinstance(text, str) and text.startswith("the cat")
    texts = lm.generate(["the cat", "a longer prompt here"], max_length=24)
    assert len(texts) == 2 and texts[1].startswith("a longer prompt here")
    only_new = lm.generate("the cat", max_length=12, strip_prompt=True)
    assert text == "the cat" + only_new


def test_bad_arguments_fail_before_any_compute(lm):
    cases = [
        (dict(inputs=[list(range(1, 30)) * 3]), "more than the cache holds"),
        (dict(inputs=PROMPTS, max_length=65), r"beyond the cache's capacity \(cache_length=64\)"),
        (dict(inputs=[[]]), "Prompt 0 is empty"),
        (dict(inputs={"token_ids": np.zeros((0, 4), "int32"),
                      "padding_mask": np.zeros((0, 4), "int32")}), "a batch of 0 rows"),
        (dict(inputs=np.zeros((0, 4), "int32")), "a batch of 0 rows"),
        (dict(inputs=PROMPTS, stop_token_ids=[37]), r"`stop_token_ids` must be ids in \[0, 37\)"),
        (dict(inputs=[[1, 99]]), r"Prompt 0 has token ids outside \[0, 37\)"),
        (dict(inputs=PROMPTS, max_length=4), "shorter than the longest prompt"),
        (dict(inputs="text"), "no tokenizer"),
        (dict(inputs=PROMPTS, sampler="beam"), "`sampler` must be one of"),
        (dict(inputs=PROMPTS, sampler=Sampler), "`sampler` must be one of"),
        (dict(inputs={"token_ids": np.array([[1, 2, 3]]), "padding_mask": np.array([[0, 1, 1]])}),
         "right-padded"),
    ]
    calls = []
    original = lm._compiled_generate
    lm._compiled_generate = lambda *a: calls.append(a)
    try:
        for kwargs, message in cases:
            kwargs.setdefault("stop_token_ids", None)
            with pytest.raises(ValueError, match=message):
                lm.generate(**kwargs)
    finally:
        lm._compiled_generate = original
    assert not calls
    with pytest.raises(ValueError, match="`temperature` must be positive"):
        Sampler("temperature", temperature=0.0)


def test_loads_a_keras_hub_causal_lm_preset_and_generates_the_same_text(keras_hub, tmp_path):
    from falcon_tf.text.tokenizer import synthetic_vocabulary

    vocabulary, merges = synthetic_vocabulary(300)
    tokenizer = keras_hub.models.FalconTokenizer(vocabulary=vocabulary,
                                                 merges=[f"{a} {b}" for a, b in merges])
    backbone = randomize(keras_hub.models.FalconBackbone(**tiny_kwargs(vocabulary_size=300)),
                         seed=5, scale=0.2)
    preprocessor = keras_hub.models.FalconCausalLMPreprocessor(tokenizer, sequence_length=48)
    reference = keras_hub.models.FalconCausalLM(backbone=backbone, preprocessor=preprocessor)
    reference.compile(sampler="greedy")
    reference.save_to_preset(str(tmp_path))
    ours = FalconCausalLM.from_preset(str(tmp_path), cache_length=48)
    assert ours.tokenizer is not None
    prompts = ["the cat sat", "on a mat in the sun"]
    expected = reference.generate(prompts, max_length=40)
    assert ours.generate(prompts, max_length=40) == list(expected)


def test_tf_and_numpy_samplers_keep_the_same_tokens():
    """top-k and top-p keep the same candidates in the graph and on the device."""
    tf = pytest.importorskip("tensorflow")
    from falcon_tf.runtime.samplers import sample_numpy, sample_tf

    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits = np.log(probs)[None].astype("float32")
    rng = np.random.default_rng(0)
    cases = {Sampler("top_k", k=3): {0, 1, 2}, Sampler("top_p", p=0.7): {0, 1, 2},
             Sampler("top_p", p=0.35): {0}, Sampler("temperature"): set(range(6)),
             Sampler("greedy"): {0}}
    for sampler, support in cases.items():
        k, p, temperature = sampler.parameters()
        drawn_tf = {int(sample_tf(tf.constant(logits), k, p, temperature, seed, 0)[0])
                    for seed in range(300)}
        drawn_np = {int(sample_numpy(logits, sampler, rng)[0]) for _ in range(300)}
        assert drawn_tf == support and drawn_np == support, sampler


def test_an_untied_lm_head_is_refused_by_name_not_silently_tied(tmp_path):
    pytest.importorskip("torch")
    from converters.convert_hf import convert_checkpoint
    from test_huggingface import hf_model

    model = hf_model("40b", tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="`tie_word_embeddings` is false"):
        FalconCausalLM.from_preset(str(tmp_path / "hf"))
    convert_checkpoint(str(tmp_path / "hf"), str(tmp_path / "preset"))
    with pytest.raises(ValueError, match="metadata.json: `lm_head` is 'untied in the checkpoint"):
        FalconCausalLM.from_preset(str(tmp_path / "preset"))
    FalconBackbone.from_preset(str(tmp_path / "preset"))  # the backbone itself loads


def test_save_to_preset_round_trips_weights_and_tokenizer(tmp_path):
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=32)
    lm.save_to_preset(str(tmp_path / "saved"))
    again = FalconCausalLM.from_preset(str(tmp_path / "saved"), cache_length=32)
    assert again.tokenizer("the cat sat") == lm.tokenizer("the cat sat")
    assert again.generate("the cat", max_length=20) == lm.generate("the cat", max_length=20)


# keras-hub's task API: compile's sampler, text through the preprocessor, generate's width.

def test_a_dict_generates_to_its_own_width_as_keras_hub(lm):
    ids = np.zeros((1, 8), "int32")
    ids[0, :3] = PROMPTS[0][:3]
    mask = np.arange(8)[None] < 3
    out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    assert out["token_ids"].shape == out["padding_mask"].shape == (1, 8)  # not cache_length
    assert out["padding_mask"].all()
    assert out["token_ids"][0].tolist() == lm.generate([PROMPTS[0][:3]], max_length=8,
                                                       stop_token_ids=None)[0]
    function = lm.make_generate_function()
    assert function is lm.generate_function is lm.make_generate_function()
    np.testing.assert_array_equal(function({"token_ids": ids, "padding_mask": mask})["token_ids"],
                                  out["token_ids"])


def test_compile_sets_the_sampler_generate_uses(lm, keras_hub):
    greedy = lm.generate(PROMPTS, max_length=20, stop_token_ids=None)
    try:
        lm.compile(sampler=Sampler("top_k", k=5, seed=11))
        sampled = lm.generate(PROMPTS, max_length=20, stop_token_ids=None)
        assert sampled != greedy  # the compiled sampler, with its seed
        assert lm.generate(PROMPTS, max_length=20, stop_token_ids=None) == sampled
        assert lm.generate(PROMPTS, max_length=20, stop_token_ids=None, sampler="greedy") == \
            greedy
        lm.compile(sampler=keras_hub.samplers.TopKSampler(k=1, seed=2))  # keras-hub's own
        assert lm.sampler == Sampler("top_k", k=1, seed=2)
        assert lm.generate(PROMPTS, max_length=20, stop_token_ids=None) == greedy
        lm.compile(sampler="random")
        assert lm.sampler.name == "temperature"
        for sampler, message in [("beam", "`sampler` must be one of"),
                                 (keras_hub.samplers.BeamSampler(), "BeamSampler has no"),
                                 (keras_hub.samplers.TopPSampler(p=0.5, k=3), "with `k` set")]:
            with pytest.raises(ValueError, match=message):
                lm.compile(sampler=sampler)
        assert lm.sampler.name == "temperature"  # a refused compile changes nothing
    finally:
        lm.compile()
    assert lm.sampler == Sampler("greedy")


@pytest.mark.slow
def test_fit_predict_and_evaluate_take_text(tmp_path):
    import keras

    from falcon_tf import FalconCausalLMPreprocessor

    tokenizer = FalconTokenizer.from_preset("falcon_tiny_random")
    backbone = randomize(FalconBackbone(**tiny_kwargs(vocabulary_size=1024)), scale=0.1)
    preprocessor = FalconCausalLMPreprocessor(tokenizer, sequence_length=8)
    lm = FalconCausalLM(backbone, preprocessor=preprocessor, cache_length=32)
    texts = ["the cat sat on the mat", "a dog ran", "birds fly south", "one two three"]
    logits = lm.predict(texts, batch_size=2, verbose=0)
    assert logits.shape == (4, 8, 1024)
    x = preprocessor(texts)[0]
    np.testing.assert_allclose(logits, lm(x).numpy(), atol=1e-5)
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(2)
    np.testing.assert_allclose(lm.predict(dataset, verbose=0), logits, atol=1e-5)
    before = [w.copy() for w in lm.get_weights()]
    history = lm.fit(texts, batch_size=2, epochs=1, validation_split=0.5, verbose=0)  # no compile
    assert {"loss", "val_loss", "sparse_categorical_accuracy"} <= set(history.history)
    assert any((a != b).any() for a, b in zip(before, lm.get_weights()))
    assert np.isfinite(lm.evaluate(texts, verbose=0, return_dict=True)["loss"])
    assert np.isfinite(lm.train_on_batch(texts[:2])).all()
    with pytest.raises(ValueError, match="`y` must be None"):
        lm.fit(texts, np.zeros((4, 8)), verbose=0)
    with pytest.raises(ValueError, match="called on text"):
        lm(texts)
    with pytest.raises(ValueError, match="a batch of texts"):
        lm.predict("one text", verbose=0)
    uncompiled = FalconCausalLM(backbone, preprocessor=preprocessor, compile=False)
    with pytest.raises(ValueError, match="You must call `compile"):
        uncompiled.fit(texts, verbose=0)
    # The compiled sampler, optimizer and loss come back from a .keras file.
    lm.compile(optimizer=keras.optimizers.SGD(0.01), sampler=Sampler("top_p", p=0.5, seed=4))
    lm.save(str(tmp_path / "lm.keras"))
    loaded = keras.models.load_model(str(tmp_path / "lm.keras"))
    assert loaded.sampler == lm.sampler and isinstance(loaded.optimizer, keras.optimizers.SGD)
    assert loaded.preprocessor.sequence_length == 8
    assert loaded.generate(texts[:2], max_length=16) == lm.generate(texts[:2], max_length=16)


def test_from_preset_attaches_a_preprocessor(tmp_path):
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=32, sequence_length=12)
    assert lm.preprocessor.sequence_length == 12 and lm.tokenizer is lm.preprocessor.tokenizer
    # Without max_length: the preprocessor's sequence_length, bounded by the cache.
    assert len(lm.generate([[5, 6, 7]], stop_token_ids=None)[0]) == 12
    lm.preprocessor.sequence_length = 100
    assert len(lm.generate([[5, 6, 7]], stop_token_ids=None)[0]) == 32
    lm.save_to_preset(str(tmp_path))
    assert FalconCausalLM.from_preset(str(tmp_path)).preprocessor.sequence_length == 100
