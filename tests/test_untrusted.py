"""What a checkpoint or preset brings from outside is checked before it is used:
nothing it names is read from outside its directory, no weight is anything but
finite floats, and sizes are bounded by the weights file before a variable is
built. The Keras model refuses ids it would otherwise clamp or wrap."""

import json
import os
import re
import time

import h5py
import numpy as np
import pytest

from conftest import randomize, tiny_kwargs, unsign
from falcon_tf import FalconBackbone
from falcon_tf.checkpoints.handles import CONFIG_FILE, WEIGHTS_FILE
from falcon_tf.untrusted import path_inside

EMBEDDING = "layers/reversible_embedding/vars/0"


@pytest.fixture
def saved(tmp_path):
    model = randomize(FalconBackbone(**tiny_kwargs()))
    path = tmp_path / "preset"
    model.save_to_preset(str(path))
    return model, unsign(path)  # the per-field checks, as for a preset from elsewhere


def replace_dataset(path, name, **create):
    """Rewrites dataset `name` of the preset's weights file with `create` options."""
    with h5py.File(path / WEIGHTS_FILE, "a") as f:
        data = f[name][()]
        del f[name]
        if "data" in create:
            f.create_dataset(name, data=create.pop("data"), **create)
        elif "link" in create:
            f[name] = create["link"]
        else:
            f.create_dataset(name, shape=data.shape, dtype=data.dtype, **create)
    return data


def test_hdf5_external_storage_is_refused(saved, tmp_path):
    _, path = saved
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(1 << 16))
    shape = h5py.File(path / WEIGHTS_FILE, "r")[EMBEDDING].shape
    size = int(np.prod(shape)) * 4
    replace_dataset(path, EMBEDDING, external=[(str(secret), 0, size)])
    with pytest.raises(ValueError, match=f"{EMBEDDING} is stored in external files"):
        FalconBackbone.from_preset(str(path))


def test_hdf5_links_are_refused(saved, tmp_path):
    _, path = saved
    other = tmp_path / "other.h5"
    with h5py.File(path / WEIGHTS_FILE, "r") as f:
        data = f[EMBEDDING][()]
    with h5py.File(other, "w") as f:
        f["x"] = data
    replace_dataset(path, EMBEDDING, link=h5py.ExternalLink(str(other), "x"))
    with pytest.raises(ValueError, match=f"{EMBEDDING} is an HDF5 ExternalLink"):
        FalconBackbone.from_preset(str(path))
    replace_dataset(path, EMBEDDING, data=data)
    with h5py.File(path / WEIGHTS_FILE, "a") as f:
        f["extra"] = h5py.SoftLink("/" + EMBEDDING)
    with pytest.raises(ValueError, match="extra is an HDF5 SoftLink"):
        FalconBackbone.from_preset(str(path))


def test_virtual_datasets_are_refused(saved):
    _, path = saved
    with h5py.File(path / WEIGHTS_FILE, "r") as f:
        shape, dtype = f[EMBEDDING].shape, f[EMBEDDING].dtype
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[:] = h5py.VirtualSource(str(path / "elsewhere.h5"), "x", shape=shape)
    with h5py.File(path / WEIGHTS_FILE, "a") as f:
        del f[EMBEDDING]
        f.create_virtual_dataset(EMBEDDING, layout)
    with pytest.raises(ValueError, match=f"{EMBEDDING} is a virtual dataset"):
        FalconBackbone.from_preset(str(path))


@pytest.mark.parametrize("value, match", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_weights_are_refused_by_name(saved, value, match):
    _, path = saved
    with h5py.File(path / WEIGHTS_FILE, "a") as f:
        data = f[EMBEDDING][()]
        data[3, 1] = value
        f[EMBEDDING][...] = data
    with pytest.raises(ValueError, match=f"{EMBEDDING} holds {match}"):
        FalconBackbone.from_preset(str(path))


@pytest.mark.parametrize("dtype", ["int32", "S4"])
def test_non_float_weights_are_refused_by_name(saved, dtype):
    _, path = saved
    with h5py.File(path / WEIGHTS_FILE, "r") as f:
        shape = f[EMBEDDING].shape
    replace_dataset(path, EMBEDDING, data=np.ones(shape, dtype))
    with pytest.raises(ValueError, match=f"{EMBEDDING} has dtype"):
        FalconBackbone.from_preset(str(path))


@pytest.mark.parametrize("field, value", [("vocabulary_size", 10**12),
                                          ("vocabulary_size", 10**8), ("num_layers", 10**6)])
def test_absurd_config_sizes_are_refused_at_once(saved, field, value):
    # The weights file bounds the config before any variable is built: no
    # allocation, no minutes spent building layers.
    _, path = saved
    with open(path / CONFIG_FILE) as f:
        data = json.load(f)
    data["config"][field] = value
    with open(path / CONFIG_FILE, "w") as f:
        json.dump(data, f)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        FalconBackbone.from_preset(str(path))
    assert time.perf_counter() - start < 1.0


def test_a_model_larger_than_the_machine_is_refused_before_allocation():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="more than this machine's"):
        FalconBackbone(**{**tiny_kwargs(), "vocabulary_size": 10**12})
    assert time.perf_counter() - start < 1.0


# Paths a checkpoint names.

def test_paths_stay_inside_their_directory(tmp_path):
    inside = tmp_path / "ckpt"
    inside.mkdir()
    (inside / "a").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("secret")
    assert path_inside(str(inside), "a", "index") == str(inside / "a")
    for name in ("../outside", str(outside), "sub/../../outside", ""):
        with pytest.raises(ValueError, match="index: path"):
            path_inside(str(inside), name, "index")
    os.symlink(outside, inside / "link")
    with pytest.raises(ValueError, match="outside"):
        path_inside(str(inside), "link", "index")
    # Hugging Face's cache: snapshots/<rev>/file links into the repository's blobs/.
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "blobs" / "f00d").write_text("w")
    os.symlink("../../blobs/f00d", repo / "snapshots" / "abc" / "model.safetensors")
    snapshot = str(repo / "snapshots" / "abc")
    assert path_inside(snapshot, "model.safetensors", "x").endswith("model.safetensors")



@pytest.fixture
def hf_checkpoint(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_huggingface import hf_model

    model = hf_model("rw", seed=3)
    directory = tmp_path / "ckpt"
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="20KB")
    return directory


@pytest.mark.parametrize("target", ["relative", "absolute", "symlink"])
def test_a_shard_outside_the_checkpoint_is_refused(hf_checkpoint, tmp_path, target):
    index_path = hf_checkpoint / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    outside = tmp_path / "outside"
    outside.mkdir()
    os.replace(hf_checkpoint / shard, outside / shard)
    if target == "relative":
        name = f"../outside/{shard}"
    elif target == "absolute":
        name = str(outside / shard)
    else:
        name = shard
        os.symlink(outside / shard, hf_checkpoint / shard)
    index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        FalconBackbone.from_preset(str(hf_checkpoint))


def test_convert_refuses_a_tokenizer_file_linking_outside(hf_checkpoint, tmp_path):
    from converters.convert_hf import convert_checkpoint

    secret = tmp_path / "secret.txt"
    secret.write_text("not a tokenizer")
    os.symlink(secret, hf_checkpoint / "merges.txt")
    out = tmp_path / "preset"
    with pytest.raises(ValueError, match="merges.txt leads to"):
        convert_checkpoint(str(hf_checkpoint), str(out))
    assert not out.exists()


# The Keras model's own inputs.

@pytest.fixture(scope="module")
def model():
    return randomize(FalconBackbone(**tiny_kwargs()))


@pytest.mark.parametrize("entry", ["call", "compiled_call", "predict"])
@pytest.mark.parametrize("ids, match", [
    ([[1, 2, 13]], "holds 13, outside"),               # the vocabulary is 13: clamped before
    ([[1, -1, 2]], "holds -1, outside"),               # id 0's output before
    (np.array([[1, 2**32 + 1, 2]], "int64"), "holds 4294967297"),  # wrapped to 1 before
    (np.array([[1.0, 2.0, 3.0]], "float32"), "must hold integers"),
])
def test_keras_refuses_ids_it_would_clamp_or_wrap(model, entry, ids, match):
    ids = np.asarray(ids)
    x = {"token_ids": ids, "padding_mask": np.ones(ids.shape, "int32")}
    run = {"call": model, "compiled_call": model.compiled_call,
           "predict": lambda v: model.predict(v, verbose=0)}[entry]
    with pytest.raises(ValueError, match=match):
        run(x)


def test_keras_refuses_a_mask_other_than_zeros_and_ones(model):
    x = {"token_ids": np.ones((1, 3), "int32"), "padding_mask": np.array([[1, 2, 1]])}
    with pytest.raises(ValueError, match="padding_mask"):
        model(x)


def test_manifest_entries_must_name_files_inside_the_artifact(tmp_path):
    from falcon_tf.artifacts import manifest

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "a.bin").write_bytes(b"abc")
    (tmp_path / "secret").write_bytes(b"abc")
    good = {"sha256": manifest.sha256(str(artifact / "a.bin")), "bytes": 3}
    manifest.verify(str(artifact), {"a.bin": good})
    with pytest.raises(ValueError, match="must be relative"):
        manifest.verify(str(artifact), {"../secret": good})
    os.symlink(tmp_path / "secret", artifact / "link.bin")
    with pytest.raises(ValueError, match="outside"):
        manifest.verify(str(artifact), {"link.bin": good})
    with pytest.raises(ValueError, match="integer `bytes`"):
        manifest.verify(str(artifact), {"a.bin": {"sha256": good["sha256"]}})


@pytest.mark.parametrize("loader, data, named", [
    ("lite_backbone", {"tflite": {"variants": {"fp32": {"sha256": "0", "bytes": 1}}},
                       "config": {"vocabulary_size": 10}}, "tflite.variants.fp32.file"),
    ("lite_causal_lm", {"causal_lm": {"variants": {"fp32": {"file": "x.tflite"}}},
                        "config": {}}, "config.vocabulary_size"),
    ("lite_causal_lm", {"causal_lm": {"variants": {"fp32": {"file": 7}}}},
     "causal_lm.variants.fp32.file"),
    ("serving", {"saved_model": {"versions": {"1": {}}},
                 "config": {"vocabulary_size": 10, "hidden_dim": 8}}, "saved_model.versions.1.files"),
    ("serving", {"saved_model": {"versions": {"1": {"files": {}}}},
                 "config": {"vocabulary_size": True}}, "config.vocabulary_size"),
])
def test_a_manifest_missing_a_field_is_refused_by_the_fields_name(tmp_path, loader, data, named):
    from falcon_tf import lite, serving

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "manifest.json").write_text(json.dumps({"format_version": 1, **data}))
    load = {"lite_backbone": lambda p: lite.FalconBackbone.from_preset(p, variant="fp32"),
            "lite_causal_lm": lambda p: lite.FalconCausalLM.from_preset(p, variant="fp32"),
            "serving": serving.FalconBackbone.from_preset}[loader]
    with pytest.raises(ValueError, match=f"field `{re.escape(named)}` must be"):
        load(str(artifact))


# A checkpoint whose LM head is its own, not the embedding (Falcon-40B/180B's layout).

@pytest.fixture
def untied_checkpoint(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_huggingface import hf_model

    directory = tmp_path / "hf"
    hf_model("40b", tie_word_embeddings=False).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("exporter", ["saved_model", "tflite_causal_lm"])
def test_causal_lm_exports_refuse_an_untied_head_before_writing(untied_checkpoint, tmp_path,
                                                               exporter):
    if exporter == "saved_model":
        from converters.export_saved_model import export_saved_model as export
    else:
        pytest.importorskip("ai_edge_litert")
        from converters.export_tflite_causal_lm import export_tflite_causal_lm as export
    out = tmp_path / "artifacts"
    with pytest.raises(ValueError, match="`tie_word_embeddings` is false"):
        export(str(untied_checkpoint), str(out))
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == []


def test_a_saved_untied_backbone_keeps_saying_so(untied_checkpoint, tmp_path):
    from falcon_tf import FalconCausalLM

    backbone = FalconBackbone.from_preset(str(untied_checkpoint))
    with pytest.raises(ValueError, match="own lm_head"):
        FalconCausalLM(backbone)
    backbone.save_to_preset(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="metadata.json: `lm_head`"):
        FalconCausalLM.from_preset(str(tmp_path / "saved"))
    again = FalconBackbone.from_preset(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="metadata.json: `lm_head`"):
        FalconCausalLM(again)


# Concurrent exporters to one artifact.

_UPDATER = """
import sys, time
from falcon_tf.artifacts import manifest
artifact, worker = sys.argv[1], sys.argv[2]
for i in range(15):
    def edit(data, i=i):
        entries = data.setdefault("entries", [])
        time.sleep(0.002)  # widens the read-modify-write window
        entries.append(f"{worker}-{i}")
    manifest.update(artifact, edit)
"""


def test_concurrent_manifest_updates_lose_nothing(tmp_path):
    import subprocess
    import sys

    from falcon_tf.artifacts import manifest

    artifact = tmp_path / "artifact"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    procs = [subprocess.Popen([sys.executable, "-c", _UPDATER, str(artifact), str(w)], env=env)
             for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    entries = manifest.read(str(artifact))["entries"]
    assert sorted(entries) == sorted(f"{w}-{i}" for w in range(4) for i in range(15))


def test_the_artifact_lock_is_reentrant_and_excludes_other_threads(tmp_path):
    import threading

    from falcon_tf.artifacts import manifest

    order = []
    with manifest.locked(str(tmp_path)):
        with manifest.locked(str(tmp_path)):  # the same thread: no deadlock
            other = threading.Thread(target=lambda: (manifest.locked(str(tmp_path)).__enter__(),
                                                     order.append("other")))
            other.start()
            time.sleep(0.3)
            order.append("first")
    other.join(timeout=10)
    assert order == ["first", "other"]


# Presets saved by falcon_tf carry their files' checksums.

def test_a_changed_file_of_a_saved_preset_is_refused_by_name(tmp_path):
    model = randomize(FalconBackbone(**tiny_kwargs()))
    model.save_to_preset(str(tmp_path / "p"))
    with open(tmp_path / "p" / CONFIG_FILE) as f:
        data = json.load(f)
    data["config"]["layer_norm_epsilon"] = 1e-3  # valid, and not what was saved
    with open(tmp_path / "p" / CONFIG_FILE, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=f"{CONFIG_FILE} differs from what metadata.json recorded when the preset"):
        FalconBackbone.from_preset(str(tmp_path / "p"))


@pytest.mark.slow
def test_damaged_presets_load_the_same_or_are_refused(tmp_path):
    # Seeded byte flips and truncations of every file of a saved preset: each
    # damaged copy either loads with outputs identical to the original's or is
    # refused with ValueError / FileNotFoundError; never another exception, a
    # hang or a NaN.
    import shutil

    model = randomize(FalconBackbone(**tiny_kwargs()))
    original = tmp_path / "original"
    model.save_to_preset(str(original))
    x = {"token_ids": np.array([[1, 2, 3, 4]], "int32"),
         "padding_mask": np.ones((1, 4), "int32")}
    expected = model(x).numpy()
    files = sorted(p.name for p in original.iterdir())
    rng = np.random.default_rng(0)
    outcomes = {"same": 0, "refused": 0}
    start = time.perf_counter()
    for case in range(300):
        damaged = tmp_path / f"case{case}"
        shutil.copytree(original, damaged)
        target = damaged / files[case % len(files)]
        data = bytearray(target.read_bytes())
        if rng.random() < 0.3:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        target.write_bytes(bytes(data))
        try:
            got = FalconBackbone.from_preset(str(damaged))(x).numpy()
        except (ValueError, FileNotFoundError):
            outcomes["refused"] += 1
        else:
            np.testing.assert_array_equal(got, expected, err_msg=f"case {case}: {target.name}")
            outcomes["same"] += 1
        shutil.rmtree(damaged)
    assert outcomes["refused"] > 100 and outcomes["same"] > 0, outcomes
    assert time.perf_counter() - start < 600


def fuzz(original, load, cases, seed, tmp_path, flippable=None):
    """Seeded byte flips and truncations of the files of directory `original`
    (one file a case, subfolders included): `load(copy)` must return what it
    returns on the original or raise ValueError / FileNotFoundError.
    `flippable(name, data)`: how many leading bytes of a file flips may touch
    (all by default). Returns the outcome counts."""
    import shutil

    expected = load(original)
    files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file()
                   and not p.name.startswith("."))
    rng = np.random.default_rng(seed)
    outcomes = {"same": 0, "refused": 0}
    for case in range(cases):
        damaged = tmp_path / f"case{case}"
        shutil.copytree(original, damaged)
        target = damaged / files[case % len(files)]
        data = bytearray(target.read_bytes())
        if rng.random() < 0.3 or not data:
            data = data[:int(rng.integers(0, len(data) + 1))]
        else:
            limit = len(data) if flippable is None else flippable(target.name, data)
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, limit))] ^= 1 << int(rng.integers(0, 8))
        target.write_bytes(bytes(data))
        try:
            got = load(damaged)
        except (ValueError, FileNotFoundError):
            outcomes["refused"] += 1
        else:
            assert got == expected, f"case {case}: {target.relative_to(damaged)}"
            outcomes["same"] += 1
        shutil.rmtree(damaged)
    return outcomes


def test_damaged_hugging_face_checkpoints_load_the_same_or_are_refused(tmp_path):
    pytest.importorskip("transformers")
    from test_huggingface import hf_model

    original = tmp_path / "hf"
    hf_model("7b").save_pretrained(original)
    x = {"token_ids": np.array([[1, 2, 3, 4]], "int32"),
         "padding_mask": np.ones((1, 4), "int32")}

    def load(directory):
        out = FalconBackbone.from_preset(str(directory))(x).numpy()
        assert np.isfinite(out).all()
        return out.tobytes()

    def flippable(name, data):
        # A safetensors file carries no checksum: a flipped bit in a tensor's
        # data is a different weight (a non-finite one is refused by the weight
        # check). Its 8-byte length and JSON header are structure, and flipped.
        if name.endswith(".safetensors"):
            return 8 + int.from_bytes(data[:8], "little")
        return len(data)

    start = time.perf_counter()
    outcomes = fuzz(original, load, 120, 1, tmp_path, flippable)
    assert outcomes["refused"] > 40 and outcomes["same"] > 0, outcomes
    assert time.perf_counter() - start < 300


def test_damaged_exported_artifacts_load_the_same_or_are_refused(tmp_path):
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf.lite import FalconCausalLM as LiteLM

    model = randomize(FalconBackbone.from_preset("falcon_tiny_random"), seed=3, scale=0.1)
    export_tflite_causal_lm("tiny", tmp_path / "out", model=model, variants=("fp32",),
                            cache_length=32, prefill_lengths=(8,), decode_windows=())

    def load(directory):
        lite = LiteLM.from_preset(str(directory), variant="fp32")
        return lite.generate([[1, 2, 3, 4, 5]], max_length=10, stop_token_ids=None)

    start = time.perf_counter()
    # Harmless flips (a timestamp digit, a tool version) are rare in the
    # manifest's bytes: seeds 3 to 7 give 1 to 3 of them in 50 manifest cases,
    # seed 2 none since prefill records no logits.
    outcomes = fuzz(tmp_path / "out" / "tiny", load, 100, 3, tmp_path)
    assert outcomes["refused"] > 40 and outcomes["same"] > 0, outcomes
    assert time.perf_counter() - start < 300
