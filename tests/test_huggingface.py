"""Hugging Face Falcon checkpoints against transformers on the same weights.

Tiny random `FalconForCausalLM` models of every Falcon variant are written with
`save_pretrained` in this test, loaded with `FalconBackbone.from_preset(dir)`,
and compared with transformers' last hidden state.
"""

import json
import os
import pickle

import numpy as np
import pytest

from falcon_tf import FalconBackbone

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_TOL = 1e-4  # max abs difference allowed against transformers

VARIANTS = {
    # Falcon-RW: ALiBi, multi-head, sequential, biases.
    "rw": dict(alibi=True, multi_query=False, new_decoder_architecture=False,
               parallel_attn=False, bias=True),
    # Falcon-7B: rotary, multi-query, parallel attention, no biases.
    "7b": dict(alibi=False, multi_query=True, new_decoder_architecture=False,
               parallel_attn=True, bias=False),
    # Falcon-40B/180B: new decoder architecture (ln_attn + ln_mlp), 2 kv heads.
    "40b": dict(alibi=False, new_decoder_architecture=True, num_kv_heads=2,
                parallel_attn=True, bias=False),
    # Falcon-11B-style: new decoder architecture with one shared LayerNorm.
    "new_arch_one_norm": dict(alibi=False, new_decoder_architecture=True, num_kv_heads=2,
                              num_ln_in_parallel_attn=1, parallel_attn=True, bias=False,
                              rope_theta=500000.0),
}


def hf_model(variant, seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.FalconConfig(
        vocab_size=37, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        ffn_hidden_size=48, layer_norm_epsilon=1e-5, **{**VARIANTS[variant], **overrides})
    model = transformers.FalconForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def save_torch_bin(model, directory):
    """A pytorch_model.bin checkpoint, as older Falcon repositories ship them."""
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))


def hf_batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 37, size=(3, 7)).astype("int64")
    mask = np.ones((3, 7), dtype="int64")
    mask[0, 5:] = 0  # right padded
    mask[1, :3] = 0  # left padded
    return ids, mask


def reference_hidden(model, ids, mask):
    # Positions count real tokens, as transformers' generate() computes them.
    position_ids = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        out = model.transformer(input_ids=torch.from_numpy(ids),
                                attention_mask=torch.from_numpy(mask),
                                position_ids=torch.from_numpy(position_ids))
    return out.last_hidden_state.numpy()


def assert_matches(ours, model):
    ids, mask = hf_batch()
    expected = reference_hidden(model, ids, mask)
    got = ours({"token_ids": ids.astype("int32"), "padding_mask": mask.astype("int32")}).numpy()
    real = mask.astype(bool)  # padded positions carry no meaning in either model
    np.testing.assert_allclose(got[real], expected[real], rtol=0, atol=HF_TOL)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_safetensors_checkpoint_matches_transformers(tmp_path, variant):
    model = hf_model(variant)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = FalconBackbone.from_preset(str(tmp_path))
    assert ours.count_params() == sum(p.numel() for n, p in model.named_parameters()
                                      if not n.startswith("lm_head"))
    assert_matches(ours, model)


@pytest.mark.parametrize("variant", ["rw", "40b"])
def test_sharded_safetensors_checkpoint_matches_transformers(tmp_path, variant):
    model = hf_model(variant, seed=1)
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert_matches(FalconBackbone.from_preset(str(tmp_path)), model)


def test_bfloat16_checkpoint_loads(tmp_path):
    model = hf_model("7b", seed=2).to(torch.bfloat16)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = FalconBackbone.from_preset(str(tmp_path))
    reference = model.float()
    # The weights are bfloat16 in both; ours computes in float32 from them.
    assert_matches(ours, reference)


def test_pytorch_bin_checkpoint_loads_with_weights_only(tmp_path):
    model = hf_model("7b", seed=3)
    save_torch_bin(model, tmp_path)
    assert_matches(FalconBackbone.from_preset(str(tmp_path)), model)


def test_legacy_non_zip_pytorch_bin_loads(tmp_path):
    # Older torch.save format, which transformers reads; it cannot be memory-mapped.
    model = hf_model("rw", seed=2)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), os.path.join(tmp_path, "pytorch_model.bin"),
               _use_new_zipfile_serialization=False)
    assert_matches(FalconBackbone.from_preset(str(tmp_path)), model)


@pytest.mark.parametrize("variant, model_type", [("40b", "RefinedWeb"),
                                                 ("7b", "RefinedWebModel")])
def test_old_refinedweb_config_names_load(tmp_path, variant, model_type):
    model = hf_model(variant, seed=4)
    model.save_pretrained(tmp_path, safe_serialization=True)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    # The original Falcon-40B / 7B configs: model_type RefinedWeb / RefinedWebModel,
    # n_head, n_head_kv, n_layer, and no new_decoder_architecture flag.
    config["model_type"] = model_type
    config["n_head"] = config.pop("num_attention_heads")
    config["n_layer"] = config.pop("num_hidden_layers")
    kv_heads = config.pop("num_kv_heads")
    if variant == "40b":
        config["n_head_kv"] = kv_heads
    config.pop("new_decoder_architecture")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    assert_matches(FalconBackbone.from_preset(str(tmp_path)), model)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    model = hf_model("rw", seed=5)
    save_torch_bin(model, tmp_path)
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state["transformer.ln_f.weight"] = exploit
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin.*refused"):
        FalconBackbone.from_preset(str(tmp_path))
    assert not marker.exists()


def test_a_raw_pickle_calling_a_function_is_refused(tmp_path):
    hf_model("rw").config.save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": exploit}, f)
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        FalconBackbone.from_preset(str(tmp_path))
    assert not marker.exists()


def test_missing_shard_is_named(tmp_path):
    model = hf_model("rw", seed=6)
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    shard = sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors"))[-1]
    os.remove(tmp_path / shard)
    with pytest.raises(FileNotFoundError, match=shard):
        FalconBackbone.from_preset(str(tmp_path))


def test_tensor_of_wrong_shape_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = hf_model("rw", seed=7)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["transformer.h.1.mlp.dense_h_to_4h.weight"] = np.zeros((47, 32), "float32")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.safetensors.*h\.1\.mlp\.dense_h_to_4h\.weight.*"
                                         r"\(47, 32\)"):
        FalconBackbone.from_preset(str(tmp_path))


def test_missing_and_unknown_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = hf_model("rw", seed=8)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("transformer.h.0.input_layernorm.bias")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="h.0.input_layernorm.bias"):
        FalconBackbone.from_preset(str(tmp_path))
    tensors["transformer.h.0.input_layernorm.bias"] = np.zeros(32, "float32")
    tensors["transformer.h.0.extra.weight"] = np.zeros(3, "float32")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="h.0.extra.weight"):
        FalconBackbone.from_preset(str(tmp_path))


@pytest.mark.parametrize("field, value, match", [
    ("model_type", "llama", "model_type"),
    ("activation", "relu", "activation"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
    ("num_ln_in_parallel_attn", 3, "num_ln_in_parallel_attn"),
])
def test_unsupported_config_is_named(tmp_path, field, value, match):
    hf_model("40b").save_pretrained(tmp_path, safe_serialization=True)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    config[field] = value
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=match) as err:
        FalconBackbone.from_preset(str(tmp_path))
    assert "config.json" in str(err.value)


def test_hf_handle_downloads_through_huggingface_hub(tmp_path, monkeypatch):
    import huggingface_hub

    model = hf_model("7b", seed=9)
    model.save_pretrained(tmp_path, safe_serialization=True)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert_matches(FalconBackbone.from_preset("hf://tiiuae/falcon-tiny@main"), model)
    assert calls == [("tiiuae/falcon-tiny", "main")]


def test_failed_hf_download_names_handle_and_local_directory(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="hf://tiiuae/falcon-7b.*local directory"):
        FalconBackbone.from_preset("falcon_7b")


@pytest.mark.parametrize("variant", ["rw", "40b"])
def test_convert_command_writes_a_preset_that_loads_the_same(tmp_path, variant):
    from converters import cli

    model = hf_model(variant, seed=10)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="20KB")
    (tmp_path / "hf" / "tokenizer.json").write_text('{"model": {}}')
    assert cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "preset")]) == 0
    preset = tmp_path / "preset"
    assert (preset / "tokenizer" / "tokenizer.json").is_file()
    assert_matches(FalconBackbone.from_preset(str(preset)), model)
    with open(preset / "config.json") as f:
        registered = json.load(f)["registered_name"]
    # Falcon-RW is keras-hub's architecture: its loader takes the converted preset.
    assert registered == ("keras_hub>FalconBackbone" if variant == "rw"
                          else "falcon_tf>FalconBackbone")


def test_keras_hub_loads_a_converted_falcon_rw_checkpoint(tmp_path, keras_hub):
    from converters.convert_hf import convert_checkpoint

    model = hf_model("rw", seed=11)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    convert_checkpoint(tmp_path / "hf", tmp_path / "preset")
    assert_matches(keras_hub.models.FalconBackbone.from_preset(str(tmp_path / "preset")), model)


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    from converters.convert_hf import convert_checkpoint

    model = hf_model("rw", seed=12)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="20KB")
    shard = sorted(p for p in os.listdir(tmp_path / "hf") if p.endswith(".safetensors"))[0]
    (tmp_path / "hf" / shard).write_bytes(b"\x00" * 16)  # a corrupt shard
    with pytest.raises(ValueError, match=shard):
        convert_checkpoint(tmp_path / "hf", tmp_path / "out" / "preset")
    assert os.listdir(tmp_path / "out") == []


def test_block_classes_match_config_layer_norm_names():
    from falcon_tf.model.config import FalconConfig
    from falcon_tf.model.decoder_block import block_class

    for parallel, separate in ((False, False), (True, False), (True, True)):
        config = FalconConfig(vocabulary_size=5, num_layers=1, num_attention_heads=2,
                              hidden_dim=8, intermediate_dim=8, parallel_attention=parallel,
                              separate_mlp_layer_norm=separate)
        assert block_class(config).layer_norm_names == config.layer_norm_names
