"""Keras's own saving: `.keras` files, from_config(get_config()) and weights-only
files, for the backbone (every family variant) and the causal LM."""

import types

import keras
import numpy as np
import pytest

from conftest import FAMILY, padded_batch, randomize, tiny_kwargs, unsign
from falcon_tf import FalconBackbone, FalconCausalLM, FalconCausalLMPreprocessor


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
    preprocessor = FalconCausalLMPreprocessor(lm.tokenizer, sequence_length=12)
    again = FalconCausalLM(lm.backbone, preprocessor=preprocessor)
    assert again.tokenizer is lm.tokenizer and again.preprocessor is preprocessor
    assert isinstance(again.generate("the cat", max_length=12), str)
    with pytest.raises(ValueError, match="unknown argument.*foo"):
        FalconCausalLM(lm.backbone, foo=123)
    with pytest.raises(ValueError, match="`preprocessor` must be a falcon_tf.FalconCausalLMPre"):
        FalconCausalLM(lm.backbone, preprocessor=types.SimpleNamespace(tokenizer=lm.tokenizer))
    with pytest.raises(ValueError, match="`tokenizer` must be a falcon_tf.FalconTokenizer"):
        FalconCausalLM(lm.backbone, tokenizer="gpt2")


# Keras quantization: the config, a .keras file and a preset keep the quantized layers.

QUANTIZED_CASES = [("int8", v) for v in sorted(FAMILY)] + [("int4", "rw"), ("float8", "7b")]


@pytest.mark.parametrize("mode,variant", QUANTIZED_CASES)
def test_quantized_backbone_round_trips_config_keras_file_and_preset(tmp_path, mode, variant):
    import json

    model = randomize(FalconBackbone(**tiny_kwargs(), **FAMILY[variant]), scale=0.1)
    x = padded_batch(model.vocabulary_size)
    float_out = model(x).numpy()
    model.quantize(mode)
    assert model.quantization_modes == [mode]
    quantized = {layer.path for layer in model._flatten_layers() if layer.quantization_mode}
    assert "transformer_layer_0/attention/query_key_value" in quantized
    assert ("token_embedding" in quantized) == (mode != "float8")  # no float8 embedding
    out = model(x).numpy()
    assert 0 < np.abs(out - float_out).max() < 1.0  # quantized, and still the same model
    np.testing.assert_allclose(model.compiled_call(x).numpy(), out, atol=1e-5)
    config = model.get_config()
    json.dumps(config)
    assert config["dtype"]["class_name"] == "DTypePolicyMap"
    rebuilt = FalconBackbone.from_config(config)
    assert rebuilt.get_config() == config
    if mode != "float8":  # Keras orders float8 variables differently once rebuilt
        rebuilt.set_weights(model.get_weights())
        np.testing.assert_array_equal(rebuilt(x).numpy(), out)
    model.save(str(tmp_path / "q.keras"))
    loaded = keras.models.load_model(str(tmp_path / "q.keras"))
    assert loaded.quantization_modes == [mode]
    np.testing.assert_array_equal(loaded(x).numpy(), out)
    model.save_to_preset(str(tmp_path / "preset"))
    preset = FalconBackbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(preset(x).numpy(), out)
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["quantization"] == [mode]


def test_dtype_policy_map_is_accepted_and_checked():
    from keras.dtype_policies import DTypePolicyMap

    policy_map = DTypePolicyMap("float32")
    policy_map["transformer_layer_1/dense_h_to_4h"] = "int8_from_float32"
    model = FalconBackbone(**tiny_kwargs(), dtype=policy_map)
    assert model.quantization_modes == ["int8"]
    assert model.transformer_layers[1].dense_h_to_4h.quantization_mode == "int8"
    assert model.transformer_layers[0].dense_h_to_4h.quantization_mode is None
    with pytest.raises(ValueError, match=r"already quantized \(int8\); Keras quantizes a float"):
        model.quantize("int8")
    assert list(policy_map) == ["transformer_layer_1/dense_h_to_4h"]  # the caller's, unchanged
    x = padded_batch(model.vocabulary_size)
    rebuilt = FalconBackbone.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(rebuilt(x).numpy(), model(x).numpy())
    floats = DTypePolicyMap("float32", {"final_layernorm": "float32"})
    later = FalconBackbone(**tiny_kwargs(), dtype=floats)
    later.quantize("int8")  # a map of float entries only: the model is float until then
    assert later.quantization_modes == ["int8"]
    assert later.get_config()["dtype"]["config"]["policy_map"]["final_layernorm"]["config"] \
        == {"name": "float32"}
    bad = DTypePolicyMap("float32")
    bad["transformer_layer_9/dense_h_to_4h"] = "int8_from_float32"
    with pytest.raises(ValueError, match="maps 'transformer_layer_9/dense_h_to_4h', which is no"):
        FalconBackbone(**tiny_kwargs(), dtype=bad)
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        FalconBackbone(**tiny_kwargs(), dtype=DTypePolicyMap("int32"))
    for entry, message in [({"class_name": "Lambda", "config": {}}, "not a dtype policy"),
                           ("gptq/4/128_from_float32", "gptq"),
                           ("int8_from_int32", "int8_from_int32")]:
        config = {"class_name": "DTypePolicyMap",
                  "config": {"default_policy": "float32", "policy_map": {"token_embedding": entry}}}
        with pytest.raises(ValueError, match=message):
            FalconBackbone(**tiny_kwargs(), dtype=config)


# A quantized preset is written in keras-hub's layout for keras-hub's architecture
# (the q/k/v kernel split in three), in falcon_tf's own (Keras variable paths)
# for the other family members; both are read as strictly.
STRICT_CASES = [("rw", "layers/falcon_transformer_decoder/dense_h_to_4h/vars/0",
                 "keras_hub>FalconBackbone"),
                ("7b", "transformer_layer_0/dense_h_to_4h/kernel", "falcon_tf>FalconBackbone")]


@pytest.mark.parametrize("variant,kernel,registered", STRICT_CASES)
def test_quantized_presets_are_read_strictly(tmp_path, variant, kernel, registered):
    import json

    import h5py

    model = FalconBackbone(**tiny_kwargs(), **FAMILY[variant])
    model.quantize("int8")
    model.save_to_preset(str(tmp_path / "p"))
    unsign(str(tmp_path / "p"))
    config_path = tmp_path / "p" / "config.json"
    assert json.loads(config_path.read_text())["registered_name"] == registered
    x = padded_batch(model.vocabulary_size)
    np.testing.assert_array_equal(FalconBackbone.from_preset(str(tmp_path / "p"))(x).numpy(),
                                  model(x).numpy())
    with pytest.raises(ValueError, match="its dtype is the DTypePolicyMap"):
        FalconBackbone.from_preset(str(tmp_path / "p"), dtype="bfloat16")
    weights = tmp_path / "p" / "model.weights.h5"
    with h5py.File(weights, "a") as f:
        f["extra/vars/0"] = np.zeros(3, "float32")
    with pytest.raises(ValueError, match="not part of this quantized FalconBackbone: extra"):
        FalconBackbone.from_preset(str(tmp_path / "p"))
    with h5py.File(weights, "a") as f:
        del f["extra"]
        data = f[kernel][()]
        del f[kernel]
        f[kernel] = data.astype("float32")  # an int8 kernel stored as floats
    with pytest.raises(ValueError, match=f"{kernel} has dtype float32; the model needs int8"):
        FalconBackbone.from_preset(str(tmp_path / "p"))
    with h5py.File(weights, "a") as f:
        del f[kernel]
    with pytest.raises(ValueError, match=f"dataset {kernel} is missing"):
        FalconBackbone.from_preset(str(tmp_path / "p"))
    # The other layout's name on this file: its datasets are not where it says.
    config = json.loads(config_path.read_text())
    config["registered_name"] = {"keras_hub>FalconBackbone": "falcon_tf>FalconBackbone",
                                 "falcon_tf>FalconBackbone": "keras_hub>FalconBackbone"}[registered]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not part of this quantized FalconBackbone|"
                                         "maps '.*query_dense', which is no layer"):
        FalconBackbone.from_preset(str(tmp_path / "p"))


@pytest.mark.parametrize("exporter", ["saved_model", "tflite", "tflite_causal_lm"])
def test_exporters_refuse_a_keras_quantized_model_before_writing(tmp_path, exporter):
    model = FalconBackbone(**tiny_kwargs())
    model.quantize("int8")
    if exporter == "saved_model":
        from converters.export_saved_model import export_saved_model as export
    elif exporter == "tflite":
        from converters.export_tflite import export_tflite as export
    else:
        from converters.export_tflite_causal_lm import export_tflite_causal_lm as export
    out = tmp_path / "artifacts"
    with pytest.raises(ValueError, match=r"takes a float model; .*quantized with Keras \(int8\)"):
        export("tiny", str(out), model=model)
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


@pytest.mark.slow
def test_quantized_causal_lm_generates_and_round_trips(tmp_path):
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=32)
    randomize(lm.backbone, scale=0.1)
    lm.quantize("int8")
    assert lm.backbone.quantization_modes == ["int8"]
    text = lm.generate("the cat", max_length=16)
    ids = lm.generate([[5, 6, 7]], max_length=12, stop_token_ids=None)
    lm.save(str(tmp_path / "lm.keras"))
    loaded = keras.models.load_model(str(tmp_path / "lm.keras"))
    assert loaded.generate("the cat", max_length=16) == text
    lm.save_to_preset(str(tmp_path / "preset"))
    again = FalconCausalLM.from_preset(str(tmp_path / "preset"), cache_length=32)
    assert again.generate([[5, 6, 7]], max_length=12, stop_token_ids=None) == ids


def test_files_and_imports_from_before_the_folders_still_load(tmp_path):
    """The modules moved into falcon_tf/model, text, artifacts, runtime and
    checkpoints: a `.keras` file naming the old modules (as files written
    before the move do) loads, and every old import path is the moved module."""
    import importlib
    import json
    import zipfile

    from falcon_tf import _moved

    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=32)
    randomize(lm.backbone, scale=0.1)
    new_path, old_path = tmp_path / "new.keras", tmp_path / "old.keras"
    lm.save(str(new_path))
    with zipfile.ZipFile(new_path) as source, zipfile.ZipFile(old_path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                text = data.decode()
                for old, new in _moved.MOVED.items():
                    text = text.replace(f'"{new}"', f'"{old}"')
                assert '"falcon_tf.causal_lm"' in text and '"falcon_tf.tokenizer"' in text
                data = json.dumps(json.loads(text)).encode()
            target.writestr(item, data)
    loaded = keras.models.load_model(str(old_path))
    assert isinstance(loaded, FalconCausalLM)
    assert loaded.generate("the cat", max_length=16) == lm.generate("the cat", max_length=16)

    for old, new in _moved.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from falcon_tf.samplers import Sampler  # an import the README once showed
    from falcon_tf.runtime.samplers import Sampler as moved
    assert Sampler is moved
