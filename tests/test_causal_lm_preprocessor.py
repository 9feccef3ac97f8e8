"""FalconCausalLMPreprocessor against keras-hub's, on the same vocabulary."""

import json

import numpy as np
import pytest

from falcon_tf import FalconCausalLMPreprocessor, FalconTokenizer
from falcon_tf.text.tokenizer import synthetic_vocabulary

TEXTS = ["the quick brown fox jumps over the lazy dog", "a cat", "", "zz top 42"]


@pytest.fixture(scope="module")
def vocabulary():
    vocabulary, merges = synthetic_vocabulary(400)
    return vocabulary, [f"{a} {b}" for a, b in merges]


@pytest.fixture(scope="module")
def tokenizer(vocabulary):
    return FalconTokenizer(*vocabulary)


def as_numpy(structure):
    tf = pytest.importorskip("tensorflow")
    return tf.nest.map_structure(np.asarray, structure)


def assert_same(a, b):
    tf = pytest.importorskip("tensorflow")
    tf.nest.assert_same_structure(a, b)
    for x, y in zip(tf.nest.flatten(as_numpy(a)), tf.nest.flatten(as_numpy(b))):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("add_start_token,add_end_token", [(True, True), (False, True),
                                                           (True, False)])
def test_matches_keras_hub(keras_hub, vocabulary, tokenizer, add_start_token, add_end_token):
    settings = dict(sequence_length=6, add_start_token=add_start_token,
                    add_end_token=add_end_token)  # 6: the long text is cut
    reference = keras_hub.models.FalconCausalLMPreprocessor(
        keras_hub.models.FalconTokenizer(*vocabulary), **settings)
    ours = FalconCausalLMPreprocessor(tokenizer, **settings)
    assert_same(ours(TEXTS), reference(TEXTS))
    assert_same(ours(TEXTS[0]), reference(TEXTS[0]))
    packed = ours.generate_preprocess(TEXTS, sequence_length=9)
    expected = reference.generate_preprocess(TEXTS, sequence_length=9)
    if not add_start_token:
        # keras-hub's generate_preprocess adds the start token whatever
        # add_start_token says; ours follows it: the prompt is the text alone.
        start = tokenizer.start_token_id
        assert (packed["token_ids"][:, 0] != start).all()
        expected = {k: np.asarray(v)[:, 1:] for k, v in expected.items()}
        packed = {k: v[:, :-1] for k, v in packed.items()}
    assert_same(packed, expected)
    packed = ours.generate_preprocess(TEXTS)
    assert ours.generate_postprocess(packed) == list(reference.generate_postprocess(packed))
    assert ours.generate_postprocess({k: v[0] for k, v in packed.items()}) == \
        reference.generate_postprocess({k: v[0] for k, v in packed.items()})


def test_python_tensors_and_tf_data_agree(tokenizer):
    tf = pytest.importorskip("tensorflow")
    ours = FalconCausalLMPreprocessor(tokenizer, sequence_length=8)
    expected = ours(TEXTS)
    assert isinstance(expected[0]["token_ids"], np.ndarray)  # Python in, numpy out
    x = expected[0]
    np.testing.assert_array_equal(x["token_ids"][:, 1:], expected[1][:, :-1])
    np.testing.assert_array_equal(x["padding_mask"][:, 1:], expected[2][:, :-1])
    assert x["token_ids"].dtype == np.int32 and x["padding_mask"].dtype == bool
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS)
    assert_same(dataset.batch(4).map(ours).get_single_element(), expected)
    rows = list(dataset.map(ours).batch(4).as_numpy_iterator())
    assert_same(rows[0], expected)
    assert tf.is_tensor(ours(tf.constant(TEXTS))[1])  # tensors in, tensors out
    assert_same(ours(tf.constant(TEXTS)), expected)
    generated = dataset.batch(4).map(ours.generate_preprocess).get_single_element()
    assert_same(generated, ours.generate_preprocess(TEXTS))
    texts = ours.generate_postprocess(generated)
    assert [t.decode() for t in texts.numpy()] == ours.generate_postprocess(
        ours.generate_preprocess(TEXTS))


def test_sequence_length_can_change_and_bad_arguments_are_named(tokenizer):
    ours = FalconCausalLMPreprocessor(tokenizer, sequence_length=8)
    ours.sequence_length = 17
    assert ours(TEXTS)[0]["token_ids"].shape == (4, 17)
    assert ours(TEXTS, sequence_length=5)[1].shape == (4, 5)
    cases = [
        (lambda: ours(TEXTS, y=[1, 2]), "`y` must be None"),
        (lambda: ours(TEXTS, sample_weight=[1.0]), "`sample_weight` must be None"),
        (lambda: ours(12), "`x` must be a string or a list of strings"),
        (lambda: setattr(ours, "sequence_length", 0), "`sequence_length` must be a positive"),
        (lambda: FalconCausalLMPreprocessor(object()), "`tokenizer` must be a falcon_tf"),
        (lambda: FalconCausalLMPreprocessor(tokenizer, add_end_token="yes"),
         "`add_end_token` must be True or False"),
        (lambda: FalconCausalLMPreprocessor(tokenizer, foo=1), "unknown argument.*foo"),
        (lambda: ours.generate_postprocess([1, 2]), "`x` must be a dict"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_config_round_trip_and_presets(keras_hub, vocabulary, tokenizer, tmp_path):
    keras = pytest.importorskip("keras")
    ours = FalconCausalLMPreprocessor(tokenizer, sequence_length=12, add_end_token=False)
    config = ours.get_config()
    json.dumps(config)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert isinstance(revived, FalconCausalLMPreprocessor) and revived.get_config() == config
    assert not revived.tokenizer.has_vocabulary  # the vocabulary is an asset
    ours.save_to_preset(str(tmp_path / "ours"))
    again = FalconCausalLMPreprocessor.from_preset(str(tmp_path / "ours"))
    assert (again.sequence_length, again.add_end_token) == (12, False)
    assert_same(again(TEXTS), ours(TEXTS))
    assert FalconCausalLMPreprocessor.from_preset(str(tmp_path / "ours"),
                                                  sequence_length=5).sequence_length == 5
    # keras-hub's preprocessor.json (beside a causal LM's preset) is read as data.
    backbone = keras_hub.models.FalconBackbone(vocabulary_size=400, num_layers=1,
                                               num_attention_heads=2, hidden_dim=8,
                                               intermediate_dim=16)
    reference = keras_hub.models.FalconCausalLMPreprocessor(
        keras_hub.models.FalconTokenizer(*vocabulary), sequence_length=21)
    keras_hub.models.FalconCausalLM(backbone=backbone, preprocessor=reference).save_to_preset(
        str(tmp_path / "keras_hub"))
    loaded = FalconCausalLMPreprocessor.from_preset(str(tmp_path / "keras_hub"))
    assert loaded.sequence_length == 21
    assert_same(loaded(TEXTS[:2]), reference(TEXTS[:2]))
    (tmp_path / "keras_hub" / "preprocessor.json").write_text(json.dumps(
        {"class_name": "FalconCausalLMPreprocessor", "config": {"sequence_length": "long"}}))
    with pytest.raises(ValueError, match="`config.sequence_length` must be int"):
        FalconCausalLMPreprocessor.from_preset(str(tmp_path / "keras_hub"))
