"""Presets: builtin names, handles, keras-hub's directory format both ways, bad input."""

import json
import os

import h5py
import numpy as np
import pytest

from conftest import padded_batch, randomize, tiny_kwargs, unsign
from falcon_tf import FalconBackbone
from falcon_tf.model.config import FalconConfig
from falcon_tf.checkpoints.handles import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture
def saved(tmp_path):
    """A preset directory written by us without its checksums (as keras-hub writes
    presets, so that each field is checked), and the model that wrote it."""
    model = randomize(FalconBackbone(**tiny_kwargs()))
    path = tmp_path / "preset"
    model.save_to_preset(str(path))
    return model, unsign(path)


def edit_config(path, edit):
    with open(path / CONFIG_FILE) as f:
        data = json.load(f)
    edit(data)
    with open(path / CONFIG_FILE, "w") as f:
        json.dump(data, f)


def test_keras_hub_reads_what_we_write(keras_hub, saved):
    model, path = saved
    theirs = keras_hub.models.FalconBackbone.from_preset(str(path))
    x = padded_batch(13)
    np.testing.assert_allclose(theirs(x).numpy(), model(x).numpy(), rtol=0, atol=1e-5)
    assert sorted(os.listdir(path)) == ["config.json", "metadata.json", "model.weights.h5"]


def test_we_read_what_keras_hub_writes(keras_hub, tmp_path):
    theirs = randomize(keras_hub.models.FalconBackbone(**tiny_kwargs(num_attention_heads=3)))
    theirs.save_to_preset(str(tmp_path / "kh"))
    ours = FalconBackbone.from_preset(str(tmp_path / "kh"))
    x = padded_batch(13)
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=0, atol=1e-5)


def test_save_overwrites_atomically_and_leaves_no_temporaries(saved, tmp_path):
    model, path = saved
    other = randomize(FalconBackbone(**tiny_kwargs()), seed=7)
    other.save_to_preset(str(path))
    assert sorted(os.listdir(tmp_path)) == ["preset"]
    x = padded_batch(13)
    np.testing.assert_allclose(FalconBackbone.from_preset(str(path))(x).numpy(),
                               other(x).numpy(), rtol=0, atol=0)


def test_builtin_presets_metadata():
    presets = FalconBackbone.presets
    rw = presets["falcon_refinedweb_1b_en"]
    assert rw["kaggle_handle"] == "kaggle://keras/falcon/keras/falcon_refinedweb_1b_en/2"
    assert rw["metadata"]["params"] == 1_311_625_216
    for name, entry in presets.items():
        assert FalconConfig(**entry["config"]).parameter_count() == entry["metadata"]["params"], name
        sources = [k for k in ("kaggle_handle", "hf_handle", "random_seed", "embedded_dir")
                   if k in entry]
        assert len(sources) == 1, name
    for name in ("falcon_rw_1b", "falcon_7b", "falcon_7b_instruct", "falcon_40b",
                 "falcon_40b_instruct", "falcon_180b"):
        assert presets[name]["hf_handle"].startswith("hf://tiiuae/falcon-"), name
    assert presets["falcon_7b"]["metadata"]["params"] == 6_921_720_704
    assert "RANDOM" in presets["falcon_tiny_random"]["metadata"]["description"]
    assert presets["falcon_tiny_trained"]["embedded_dir"] == "falcon_tiny_trained"


def test_trained_preset_ships_in_the_package_and_loads_without_download():
    from falcon_tf import FalconCausalLM
    from falcon_tf.checkpoints.handles import embedded_dir, resolve

    checkpoint = resolve("falcon_tiny_trained")
    directory = checkpoint.directory
    entry = FalconBackbone.presets["falcon_tiny_trained"]
    assert checkpoint.kind == "dir" and directory == embedded_dir(entry)
    import falcon_tf

    assert directory.startswith(os.path.dirname(os.path.abspath(falcon_tf.__file__)) + os.sep)
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(directory) for f in files)
    assert size < 6 * 2**20  # a few MB in all
    lm = FalconCausalLM.from_preset("falcon_tiny_trained")
    assert lm.backbone.count_params() == entry["metadata"]["params"]
    assert lm.tokenizer.vocabulary_size() == entry["config"]["vocabulary_size"]
    assert lm.tokenizer.start_token == "<|endoftext|>"
    # The same architecture without weights needs no files read beyond the config.
    fresh = FalconCausalLM.from_preset("falcon_tiny_trained", load_weights=False)
    assert fresh.tokenizer.vocabulary_size() == lm.tokenizer.vocabulary_size()


def test_tiny_random_preset_is_deterministic_and_needs_no_download():
    a = FalconBackbone.from_preset("falcon_tiny_random")
    b = FalconBackbone.from_preset("falcon_tiny_random")
    x = padded_batch(1024, seq=9)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    assert a.count_params() == FalconBackbone.presets["falcon_tiny_random"]["metadata"]["params"]


def test_load_weights_false_and_overrides(saved):
    model, path = saved
    fresh = FalconBackbone.from_preset(str(path), load_weights=False)
    x = padded_batch(13)
    assert np.abs(fresh(x).numpy() - model(x).numpy()).max() > 1e-3
    half = FalconBackbone.from_preset(str(path), dtype="bfloat16")
    assert half.dtype_policy.name == "bfloat16"
    np.testing.assert_allclose(half(x).numpy().astype("float32"), model(x).numpy(), atol=0.15)
    with pytest.raises(ValueError, match="num_query_groups"):
        FalconBackbone.from_preset(str(path), num_query_groups=1)


def test_unknown_handle_names_it_and_the_local_directory_way():
    with pytest.raises(ValueError, match="falcon_nope.*local directory"):
        FalconBackbone.from_preset("falcon_nope")


def test_bad_kaggle_handle_is_refused_before_any_download():
    with pytest.raises(ValueError, match="kaggle://only/two.*local directory"):
        FalconBackbone.from_preset("kaggle://only/two")


def test_builtin_preset_without_weights_needs_no_download(monkeypatch):
    import kagglehub

    monkeypatch.setattr(kagglehub, "model_download",
                        lambda *a, **k: pytest.fail("downloaded a config it already has"))
    model = FalconBackbone.from_preset("falcon_refinedweb_1b_en", load_weights=False,
                                       num_layers=1)
    assert model.hidden_dim == 2048 and model.num_layers == 1


def test_failed_download_names_handle_and_local_directory(monkeypatch):
    import kagglehub

    def offline(handle, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    with pytest.raises(ValueError) as err:
        FalconBackbone.from_preset("falcon_refinedweb_1b_en")
    message = str(err.value)
    assert "kaggle://keras/falcon/keras/falcon_refinedweb_1b_en/2" in message
    assert "ConnectionError" in message and "local directory" in message
    assert "/path/to/falcon_refinedweb_1b_en" in message


def test_missing_files_are_named(saved):
    _, path = saved
    os.remove(path / WEIGHTS_FILE)
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        FalconBackbone.from_preset(str(path))
    FalconBackbone.from_preset(str(path), load_weights=False)  # config alone is enough
    os.remove(path / CONFIG_FILE)
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        FalconBackbone.from_preset(str(path))


def test_corrupt_files_are_named(saved):
    _, path = saved
    (path / WEIGHTS_FILE).write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        FalconBackbone.from_preset(str(path))
    (path / CONFIG_FILE).write_text("{ truncated")
    with pytest.raises(ValueError, match=f"{CONFIG_FILE} is not valid JSON"):
        FalconBackbone.from_preset(str(path))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["config"].update(rotary_dim=8), "config.rotary_dim"),
    (lambda d: d["config"].update(hidden_dim="32"), "`hidden_dim`"),
    (lambda d: d["config"].update(layer_norm_epsilon=[1]), "`layer_norm_epsilon`"),
    (lambda d: d["config"].update(trainable="yes"), "config.trainable"),
    (lambda d: d["config"].pop("num_layers"), "config.num_layers"),
    (lambda d: d["config"].update(dtype={"class_name": "DTypePolicy",
                                         "config": {"name": "int4"}}), "config.dtype"),
    (lambda d: d.update(class_name="GPT2Backbone"), "class_name"),
    # A config naming code to run is refused as data; nothing is imported.
    (lambda d: d.update(module="os", registered_name="os>system"), "registered_name"),
])
def test_bad_config_names_file_and_field(saved, edit, match):
    _, path = saved
    edit_config(path, edit)
    with pytest.raises(ValueError, match=match) as err:
        FalconBackbone.from_preset(str(path))
    assert CONFIG_FILE in str(err.value)


def test_weights_not_matching_the_config_are_named(saved):
    _, path = saved
    edit_config(path, lambda d: d["config"].update(intermediate_dim=64))
    with pytest.raises(ValueError, match="dense_h_to_4h/vars/0 has shape"):
        FalconBackbone.from_preset(str(path))
    edit_config(path, lambda d: d["config"].update(intermediate_dim=128, num_layers=1))
    with pytest.raises(ValueError, match="not part of a FalconBackbone"):
        FalconBackbone.from_preset(str(path))
    edit_config(path, lambda d: d["config"].update(num_layers=3))
    with pytest.raises(ValueError, match="falcon_transformer_decoder_2.*missing"):
        FalconBackbone.from_preset(str(path))


def test_a_missing_dataset_is_named(saved):
    _, path = saved
    with h5py.File(path / WEIGHTS_FILE, "a") as f:
        del f["layers/layer_normalization/vars/1"]
    with pytest.raises(ValueError, match="layers/layer_normalization/vars/1 is missing"):
        FalconBackbone.from_preset(str(path))


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_float16"])
def test_sixteen_bit_models_save_and_reload(tmp_path, dtype):
    model = randomize(FalconBackbone(**tiny_kwargs(), dtype=dtype), scale=0.1)
    model.save_to_preset(str(tmp_path / "p"))
    # Like keras-hub: the saved dtype is not restored unless asked for.
    assert FalconBackbone.from_preset(str(tmp_path / "p")).dtype_policy.name == "float32"
    again = FalconBackbone.from_preset(str(tmp_path / "p"), dtype=dtype)
    assert again.dtype_policy.name == dtype
    x = padded_batch(13)
    np.testing.assert_array_equal(again(x).numpy(), model(x).numpy())


def test_bfloat16_presets_interoperate_with_keras_hub(keras_hub, tmp_path):
    # Keras writes bfloat16 weights as raw 2-byte data marked by an attribute.
    theirs = randomize(keras_hub.models.FalconBackbone(**tiny_kwargs(), dtype="bfloat16"),
                       scale=0.1)
    theirs.save_to_preset(str(tmp_path / "kh"))
    ours = FalconBackbone.from_preset(str(tmp_path / "kh"), dtype="bfloat16")
    assert ours.dtype_policy.name == "bfloat16"
    for ours_var, their_var in zip(ours.token_embedding.weights, theirs.token_embedding.weights):
        np.testing.assert_array_equal(ours_var.numpy(), their_var.numpy())
    ours.save_to_preset(str(tmp_path / "ours"))
    back = keras_hub.models.FalconBackbone.from_preset(str(tmp_path / "ours"), dtype="bfloat16")
    x = padded_batch(13)
    np.testing.assert_array_equal(back(x).numpy(), theirs(x).numpy())
    # Both loaders agree on the default: float32 weights, the same numbers.
    np.testing.assert_allclose(
        FalconBackbone.from_preset(str(tmp_path / "kh"))(x).numpy(),
        keras_hub.models.FalconBackbone.from_preset(str(tmp_path / "kh"))(x).numpy(),
        rtol=0, atol=1e-5)


def test_artifact_names_of_handles():
    from falcon_tf.checkpoints.handles import artifact_name

    assert artifact_name("kaggle://keras/falcon/keras/falcon_refinedweb_1b_en/2") == \
        "falcon_refinedweb_1b_en"
    assert artifact_name("hf://tiiuae/falcon-7b@main") == "falcon-7b"
    assert artifact_name("/data/presets/mine/") == "mine"
    assert artifact_name("falcon_tiny_random") == "falcon_tiny_random"
