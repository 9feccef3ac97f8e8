"""SavedModel export for TF Serving and the server loader."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import randomize
from converters.export_saved_model import SIGNATURES, WARMUP_FILE, check_batch, export_saved_model
from falcon_tf import FalconBackbone
from falcon_tf.artifacts import contract
from falcon_tf.serving import FalconBackbone as ServingBackbone

TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-weight backbone exported once as version 1, its written files
    checked in a child process as a large model's are; returns (model, artifact dir)."""
    out = tmp_path_factory.mktemp("artifacts")
    model = randomize(FalconBackbone.from_preset("falcon_tiny_random", load_weights=False),
                      scale=0.1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("converters.export_saved_model.CHILD_CHECK_BYTES", 0)
        export_saved_model("falcon_tiny_random", out, model=model)
    return model, out / "falcon_tiny_random"


def test_export_layout_and_manifest(exported):
    model, artifact = exported
    version = artifact / "saved_model" / "1"
    assert (version / "saved_model.pb").is_file() and (version / WARMUP_FILE).is_file()
    assert (artifact / "serving" / "models.config").is_file()
    assert (artifact / "serving" / "batching_parameters.txt").is_file()
    data = json.loads((artifact / "manifest.json").read_text())
    entry = data["saved_model"]["versions"]["1"]
    assert data["config"]["vocabulary_size"] == model.vocabulary_size
    for relative, info in entry["files"].items():
        assert os.path.getsize(artifact / relative) == info["bytes"]
    for signature in SIGNATURES:
        assert entry["parity"][signature]["max_abs_diff_vs_keras"] <= TOL
        assert entry["signatures"][signature] == contract.backbone_signature(
            None, None, model.hidden_dim)
    assert "tensorflow" in entry["tool_versions"]


def test_each_weight_is_stored_once(exported):
    # The checkpoint's elements: one per model parameter, plus at most a few
    # scalars of state (a server loads every stored copy).
    model, artifact = exported
    reader = tf.train.load_checkpoint(str(artifact / "saved_model" / "1" / "variables" /
                                          "variables"))
    stored = sum(int(np.prod(shape)) for name, shape in
                 reader.get_variable_to_shape_map().items() if "VARIABLE_VALUE" in name)
    assert model.count_params() <= stored <= 1.02 * model.count_params()


def test_signatures_match_keras_in_a_process_with_only_tensorflow(exported, tmp_path):
    model, artifact = exported
    x = check_batch(model.vocabulary_size, seed=3)
    np.savez(tmp_path / "x.npz", **x)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        x = np.load({str(tmp_path / "x.npz")!r})
        loaded = tf.saved_model.load({str(artifact / "saved_model" / "1")!r})
        out = {{name: loaded.signatures[name](token_ids=tf.constant(x["token_ids"]),
                                              padding_mask=tf.constant(x["padding_mask"]))
                ["sequence_output"].numpy() for name in {list(SIGNATURES)!r}}}
        np.savez({str(tmp_path / "out.npz")!r}, **out)
        assert not [m for m in sys.modules if m.startswith(("falcon_tf", "keras_hub"))]
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = model(x).numpy()
    out = np.load(tmp_path / "out.npz")
    for name in SIGNATURES:
        np.testing.assert_allclose(out[name], expected, rtol=0, atol=TOL)
    assert np.isfinite(out["serving_default"][3]).all()  # the all-padding row


def test_saved_model_cli_lists_both_signatures(exported):
    _, artifact = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--all", "--dir", str(artifact / "saved_model" / "1")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for signature in SIGNATURES:
        block = proc.stdout.split(f"signature_def['{signature}']:")[1].split("signature_def[")[0]
        for name in ("token_ids", "padding_mask"):
            assert f"inputs['{name}']" in block
        assert block.count("dtype: DT_INT32") == 2 and block.count("shape: (-1, -1)") == 2
        assert "outputs['sequence_output']" in block and "shape: (-1, -1, 64)" in block


def test_warmup_requests_parse_and_replay(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    model, artifact = exported
    loaded = tf.saved_model.load(str(artifact / "saved_model" / "1"))
    records = list(tf.data.TFRecordDataset(str(artifact / "saved_model" / "1" / WARMUP_FILE)))
    requests = [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request
                for r in records]
    assert [r.model_spec.signature_name for r in requests] == [
        "serving_default", "serving_default", "generate"]
    for request in requests[:2]:
        x = {k: tf.make_ndarray(request.inputs[k]) for k in ("token_ids", "padding_mask")}
        out = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})
        np.testing.assert_allclose(out["sequence_output"].numpy(), model(x).numpy(), rtol=0,
                                   atol=TOL)
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in requests[2].inputs.items()}
    out = loaded.signatures["generate"](**inputs)
    from falcon_tf import FalconCausalLM

    prompt = inputs["token_ids"].numpy().tolist()
    expected = FalconCausalLM(model, cache_length=8).generate(prompt, max_length=8,
                                                              stop_token_ids=None)
    assert out["token_ids"].numpy().tolist() == expected


@pytest.mark.parametrize("signature", SIGNATURES)
def test_loader_matches_keras(exported, signature):
    model, artifact = exported
    served = ServingBackbone.from_preset(str(artifact), signature=signature)
    x = check_batch(model.vocabulary_size, seed=5)
    out = served(x)
    assert isinstance(out, np.ndarray) and out.shape == (4, 12, model.hidden_dim)
    np.testing.assert_allclose(out, model(x).numpy(), rtol=0, atol=TOL)
    assert np.isfinite(out[3]).all()  # a row whose padding mask is all zeros


def test_loader_finds_preset_names_under_the_artifacts_root(exported, monkeypatch):
    _, artifact = exported
    monkeypatch.setenv("FALCON_TF_ARTIFACTS", str(artifact.parent))
    assert ServingBackbone.from_preset("falcon_tiny_random").path.endswith(
        os.path.join("saved_model", "1"))
    with pytest.raises(FileNotFoundError, match="falcon-tf export"):
        ServingBackbone.from_preset("falcon_7b")


@pytest.mark.parametrize("edit, match", [
    (lambda x: x.update(token_ids=x["token_ids"] + 5000), "`token_ids` holds"),
    (lambda x: x.update(token_ids=-x["token_ids"] - 1), "`token_ids` holds -"),
    (lambda x: x.update(padding_mask=x["padding_mask"][:, :5]), "same shape"),
    (lambda x: x.update(token_ids=x["token_ids"].astype("float32")), "`token_ids` must hold int"),
    (lambda x: x.update(padding_mask=x["padding_mask"][0]), "`padding_mask` must be"),
    (lambda x: x.update(padding_mask=x["padding_mask"] * 2), "only 0 and 1"),
    (lambda x: x.pop("padding_mask"), "exactly `token_ids` and `padding_mask`"),
])
def test_bad_inputs_are_named(exported, edit, match):
    model, artifact = exported
    served = ServingBackbone.from_preset(str(artifact))
    x = check_batch(model.vocabulary_size)
    edit(x)
    with pytest.raises(ValueError, match=match):
        served(x)


def test_bad_loader_arguments(exported):
    _, artifact = exported
    with pytest.raises(ValueError, match="`version` 9"):
        ServingBackbone.from_preset(str(artifact), version=9)
    with pytest.raises(ValueError, match="`signature`"):
        ServingBackbone.from_preset(str(artifact), signature="serve")


def copy_artifact(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_file_is_refused_with_its_name(exported, tmp_path):
    _, artifact = exported
    artifact = copy_artifact(artifact, tmp_path / "copy")
    data_file = next((artifact / "saved_model" / "1" / "variables").glob("variables.data-*"))
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 0xFF
    data_file.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=f"Checksum mismatch: .*{data_file.name}"):
        ServingBackbone.from_preset(str(artifact))
    # Unverified, TensorFlow's own checksum still catches it; the error names the file.
    with pytest.raises(ValueError, match="Could not load the SavedModel.*Checksum does not match"):
        ServingBackbone.from_preset(str(artifact), verify_checksums=False)
    os.remove(artifact / "saved_model" / "1" / "saved_model.pb")
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        ServingBackbone.from_preset(str(artifact))


def test_second_export_adds_version_2_and_leaves_version_1_untouched(exported, tmp_path):
    model, artifact = exported
    artifact = copy_artifact(artifact, tmp_path / "art" / "falcon_tiny_random")
    before = {p: p.read_bytes() for p in (artifact / "saved_model" / "1").rglob("*") if p.is_file()}
    export_saved_model("falcon_tiny_random", tmp_path / "art", model=model)
    assert sorted(os.listdir(artifact / "saved_model")) == ["1", "2"]
    after = {p: p.read_bytes() for p in (artifact / "saved_model" / "1").rglob("*") if p.is_file()}
    assert before == after
    data = json.loads((artifact / "manifest.json").read_text())
    assert sorted(data["saved_model"]["versions"]) == ["1", "2"]
    assert ServingBackbone.from_preset(str(artifact)).path.endswith(os.path.join("saved_model", "2"))
    # Version 1 was checked in a child process, version 2 in this one: the same findings.
    first, second = (data["saved_model"]["versions"][v] for v in ("1", "2"))
    assert first["parity"] == second["parity"]
    assert first["signatures"] == second["signatures"]


def test_export_killed_midway_leaves_no_visible_version(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        import converters.export_saved_model as export
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)  # as if the machine pulled the plug
        export.write_warmup = die
        export.export_saved_model("falcon_tiny_random", {str(tmp_path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    base = tmp_path / "falcon_tiny_random" / "saved_model"
    assert [d for d in os.listdir(base) if d.isdigit()] == []  # no version for TF Serving
    assert not (tmp_path / "falcon_tiny_random" / "manifest.json").exists()
    export_saved_model("falcon_tiny_random", tmp_path)  # the next export cleans up and works
    assert sorted(os.listdir(base)) == ["1"]


def test_cli_export(tmp_path, capsys):
    from converters import cli

    assert cli.main(["export", "--preset", "falcon_tiny_random", "--out", str(tmp_path),
                     "--format", "saved_model"]) == 0
    out = capsys.readouterr().out
    assert "saved_model/1" in out and "serving_xla max|diff|" in out
