"""Keras's own saving: `.keras` files, from_config(get_config()) and weights-only
files, for the backbone (every family variant) and the causal LM."""

import types

import keras
import numpy as np
import pytest

from conftest import FAMILY, padded_batch, randomize, tiny_kwargs
from falcon_tf import FalconBackbone, FalconCausalLM


@pytest.mark.parametrize("variant", sorted(FAMILY))
def test_backbone_keras_file_round_trip(tmp_path, variant):
    model = randomize(FalconBackbone(**tiny_kwargs(), **FAMILY[variant]))
    x = padded_batch(model.vocabulary_size)
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FalconBackbone)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    again = FalconBackbone.from_config(model.get_config())
    again.set_weights(model.get_weights())
    np.testing.assert_array_equal(again(x).numpy(), model(x).numpy())


def test_backbone_weights_file_round_trip(tmp_path):
    model = randomize(FalconBackbone(**tiny_kwargs()))
    model.save_weights(str(tmp_path / "m.weights.h5"))
    other = FalconBackbone(**tiny_kwargs())
    other.load_weights(str(tmp_path / "m.weights.h5"))
    x = padded_batch(model.vocabulary_size)
    np.testing.assert_array_equal(other(x).numpy(), model(x).numpy())


def test_causal_lm_keras_file_keeps_weights_tokenizer_and_generations(tmp_path):
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=32)
    randomize(lm.backbone, scale=0.1)
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FalconCausalLM) and loaded.cache_length == 32
    assert loaded.tokenizer("the cat sat") == lm.tokenizer("the cat sat")
    assert loaded.generate("the cat", max_length=16) == lm.generate("the cat", max_length=16)
    rebuilt = FalconCausalLM.from_config(lm.get_config())
    rebuilt.set_weights(lm.get_weights())
    ids = [[5, 6, 7]]
    assert rebuilt.generate(ids, max_length=10, stop_token_ids=None) == lm.generate(
        ids, max_length=10, stop_token_ids=None)


def test_causal_lm_takes_keras_hubs_preprocessor_form_and_refuses_unknown_arguments():
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=32)
    preprocessor = types.SimpleNamespace(tokenizer=lm.tokenizer)
    again = FalconCausalLM(lm.backbone, preprocessor=preprocessor)
    assert again.tokenizer is lm.tokenizer and again.preprocessor is preprocessor
    assert isinstance(again.generate("the cat", max_length=12), str)
    with pytest.raises(ValueError, match="unknown argument.*foo"):
        FalconCausalLM(lm.backbone, foo=123)
    with pytest.raises(ValueError, match="`preprocessor` must carry"):
        FalconCausalLM(lm.backbone, preprocessor=object())
