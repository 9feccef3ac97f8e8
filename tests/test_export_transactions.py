"""Exports publish their files and manifest together (falcon_tf.artifacts.manifest.commit):
an export killed at any point leaves the previous export loadable, or a
journal that the next reader finishes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from falcon_tf.artifacts import manifest

pytest.importorskip("ai_edge_litert")

EXPORT = textwrap.dedent("""
    import os, sys
    from converters import export_tflite, export_tflite_causal_lm
    from falcon_tf import FalconBackbone
    from falcon_tf.artifacts import manifest
    from conftest import randomize

    out, seed, kill_at = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    def killed(*args, **kwargs):
        os.kill(os.getpid(), 9)

    if kill_at == "before_publishing":  # every file written and checked, nothing published
        export_tflite.gpu_fully_accelerated = killed
    elif kill_at == "publishing":  # the journal written, no file moved yet
        replay = manifest._replay
        manifest._replay = lambda folder, journal: (
            killed() if journal["moves"] else replay(folder, journal))
    model = randomize(FalconBackbone.from_preset("falcon_tiny_random"), seed=seed, scale=0.1)
    export_tflite_causal_lm.export_tflite_causal_lm(
        "falcon_tiny_random", out, model=model, variants=("fp32",), cache_length=32,
        prefill_lengths=(8,), decode_windows=())
""")


def export(out, seed, kill_at="nowhere"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(__file__)] + sys.path))
    return subprocess.run([sys.executable, "-c", EXPORT, str(out), str(seed), kill_at],
                          capture_output=True, text=True, timeout=600, env=env)


def generated(artifact):
    from falcon_tf.lite import FalconCausalLM

    return {v: FalconCausalLM.from_preset(str(artifact), variant=v).generate(
        [[1, 2, 3, 4, 5]], max_length=12, stop_token_ids=None) for v in ("fp32",)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An export of seed 1 (the one a later export replaces) and a clean
    export of seed 2 (what that later export should leave), with the tokens
    each generates."""
    root = tmp_path_factory.mktemp("exports")
    for seed in (1, 2):
        assert export(root / f"seed{seed}", seed).returncode == 0
    first, second = (root / f"seed{s}" / "falcon_tiny_random" for s in (1, 2))
    return first, generated(first), generated(second)


def copy_of(artifact, tmp_path):
    import shutil

    shutil.copytree(artifact, tmp_path / "falcon_tiny_random")
    return tmp_path / "falcon_tiny_random"


def test_an_export_killed_before_publishing_leaves_the_previous_one_loadable(tmp_path,
                                                                             exported):
    first, before, after = exported
    artifact = copy_of(first, tmp_path)
    manifest_before = (artifact / "manifest.json").read_bytes()
    files_before = {p.name: p.read_bytes() for p in (artifact / "tflite").iterdir()}

    proc = export(tmp_path, seed=2, kill_at="before_publishing")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (artifact / "manifest.json").read_bytes() == manifest_before
    visible = {p.name: p.read_bytes() for p in (artifact / "tflite").iterdir()
               if not p.name.startswith(".")}
    assert visible == files_before
    staged = [p for p in (artifact / "tflite").iterdir() if p.name.startswith(".staged-")]
    assert staged  # the killed export had written its files
    assert generated(artifact) == before

    # The next export removes what the killed one left, and publishes its own.
    assert export(tmp_path, seed=2).returncode == 0
    assert not [p for p in (artifact / "tflite").iterdir() if p.name.startswith(".staged-")]
    assert generated(artifact) == after != before


def test_an_export_killed_while_publishing_is_finished_by_the_next_reader(tmp_path, exported):
    first, before, after = exported
    artifact = copy_of(first, tmp_path)
    proc = export(tmp_path, seed=2, kill_at="publishing")
    assert proc.returncode == -9, proc.stderr[-2000:]
    journal = artifact / manifest.JOURNAL_FILE
    assert journal.exists()
    new = json.loads(journal.read_text())["manifest"]["causal_lm"]["variants"]

    got = generated(artifact)  # reading the manifest finishes the publication
    assert not journal.exists()
    data = manifest.read(str(artifact))
    for variant, entry in data["causal_lm"]["variants"].items():
        assert entry["sha256"] == new[variant]["sha256"]
        assert manifest.sha256(str(artifact / entry["file"])) == entry["sha256"]
    assert not [p for p in (artifact / "tflite").iterdir() if p.name.startswith(".")]
    # The same tokens as an export of the same weights that was never interrupted.
    assert got == after != before


def test_a_failed_export_removes_its_staged_files(tmp_path, monkeypatch):
    from converters import export_tflite
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf import FalconBackbone

    def fails(path):
        raise RuntimeError("the probe failed")

    monkeypatch.setattr(export_tflite, "gpu_fully_accelerated", fails)
    with pytest.raises(RuntimeError, match="the probe failed"):
        export_tflite_causal_lm("tiny", tmp_path, model=FalconBackbone.from_preset(
            "falcon_tiny_random"), variants=("fp32",), cache_length=32, prefill_lengths=(8,))
    assert [p.name for p in (tmp_path / "tiny" / "tflite").iterdir()] == []
    assert not (tmp_path / "tiny" / "manifest.json").exists()


def test_temporaries_of_dead_exports_are_removed(tmp_path, monkeypatch):
    import tempfile

    from converters import export_tflite
    from falcon_tf import FalconBackbone

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    left = tmp_path / f"falcon-tf-tflite-{dead}-abc"
    left.mkdir()
    (left / "variables.data").write_bytes(b"weights")
    alive = tmp_path / f"falcon-tf-tflite-{os.getppid()}-abc"  # a running process's
    alive.mkdir()
    export_tflite.convert_fp32(FalconBackbone.from_preset("falcon_tiny_random"), 1, 8)
    assert not left.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("falcon-tf-")) == [
        alive.name]  # and the conversion removed its own


def test_published_files_take_the_umasks_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        manifest.atomic_write(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
