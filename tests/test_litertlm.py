"""The LiteRT-LM bundle: built from a tiny causal-LM export, read back with
litert-lm-builder's reader, and run on litert-lm-api's Engine (CPU backend)."""

import json
import os

import pytest

from conftest import randomize
from converters.export_litertlm import CHECK_NEW_TOKENS, export_litertlm, read_bundle
from converters.export_tflite_causal_lm import export_tflite_causal_lm
from falcon_tf import FalconCausalLM
from falcon_tf.artifacts import contract

pytest.importorskip("ai_edge_litert")

CACHE, PREFILL = 64, (8, 16)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=CACHE)
    # Large weights: the greedy continuation depends on the prompt and on every
    # cache slot, so a wrong input_pos, mask or cache write changes the text.
    randomize(lm.backbone, seed=4, scale=1.0)
    # A decode_<W> signature beside decode: the Engine must still pick decode.
    export_tflite_causal_lm("falcon_tiny_random", out, model=lm.backbone, tokenizer=lm.tokenizer,
                            variants=("fp32",), cache_length=CACHE, prefill_lengths=PREFILL,
                            decode_windows=(32,))
    artifact = out / "falcon_tiny_random"
    return lm, artifact, export_litertlm(str(artifact), variant="fp32")


def test_bundle_holds_the_model_the_tokenizer_and_the_llm_metadata(bundled):
    lm, artifact, entry = bundled
    data = json.loads((artifact / "manifest.json").read_text())
    assert data["causal_lm"]["litertlm"]["fp32"] == entry
    path = artifact / entry["file"]
    assert entry["file"] == os.path.join("litertlm", "falcon_tiny_random_fp32.litertlm")
    assert entry["bytes"] == path.stat().st_size
    assert not [p for p in os.listdir(path.parent) if p != path.name]  # no temporary left
    tflite = data["causal_lm"]["variants"]["fp32"]
    bundle = read_bundle(str(path))
    sections = {s["data_type"]: s for s in bundle["sections"]}
    assert sorted(sections) == ["HF_Tokenizer_Zlib", "LlmMetadataProto", "TFLiteModel"]
    assert sections["TFLiteModel"]["model_type"] == "tf_lite_prefill_decode"
    assert sections["TFLiteModel"]["bytes"] == tflite["bytes"]  # the file, byte for byte
    assert bundle["system_metadata"]["model"] == "falcon_tiny_random"
    meta = bundle["llm_metadata"]
    assert list(meta.start_token.token_ids.ids) == [lm.tokenizer.start_token_id]
    assert [list(s.token_ids.ids) for s in meta.stop_tokens] == [[lm.tokenizer.end_token_id]]
    assert meta.max_num_tokens == CACHE
    assert meta.sampler_params.k == 1
    assert entry["from"][tflite["file"]] == tflite["sha256"]


def test_engine_loads_the_bundle_on_cpu_with_our_tokenizer_and_tokens(bundled):
    lm, _, entry = bundled
    check = entry["runtime_check"]
    assert check["ran"], check.get("error")
    assert check["engine_start_token_id"] == lm.tokenizer.start_token_id
    assert check["engine_stop_token_ids"] == [[lm.tokenizer.end_token_id]]
    assert check["engine_prompt_ids_equal"]
    assert len(check["falcon_tf_lite_ids"]) == CHECK_NEW_TOKENS


def test_engine_generates_the_same_greedy_text_as_falcon_tf_lite(bundled):
    check = bundled[2]["runtime_check"]
    assert check["ran"], check.get("error")
    assert check["engine_text"] == check["falcon_tf_lite_text"], check


def test_engine_runs_the_int4_file_whose_every_projection_is_int4(bundled, tmp_path):
    """The richest integer file (int4 blocks in every projection, int8 head
    rows and lookup table) in the Engine: the same text as falcon_tf.lite."""
    lm = bundled[0]
    export_tflite_causal_lm("falcon_tiny_random", tmp_path, model=lm.backbone,
                            tokenizer=lm.tokenizer, variants=("int4",), cache_length=CACHE,
                            prefill_lengths=PREFILL, int4_projections="all")
    check = export_litertlm(str(tmp_path / "falcon_tiny_random"), variant="int4")["runtime_check"]
    assert check["ran"], check.get("error")
    assert check["engine_prompt_ids_equal"]
    assert check["engine_text"] == check["falcon_tf_lite_text"], check


def test_export_litertlm_checks_its_inputs(bundled, tmp_path):
    _, artifact, _ = bundled
    with pytest.raises(ValueError, match=r"`max_tokens` must be an integer in \[1, 64\]"):
        export_litertlm(str(artifact), max_tokens=CACHE + 1, check=False)
    with pytest.raises(ValueError, match="`variant` 'int8' of the causal LM is not exported"):
        export_litertlm(str(artifact), variant="int8", check=False)
    copy = tmp_path / "falcon_tiny_random"
    copy.mkdir()
    (copy / "manifest.json").write_text((artifact / "manifest.json").read_text())
    (copy / "tflite").mkdir()
    tflite = json.loads((artifact / "manifest.json").read_text())["causal_lm"]["variants"]
    (copy / tflite["fp32"]["file"]).write_bytes(b"not the exported model")
    (copy / "tokenizer").mkdir()
    (copy / contract.TOKENIZER_FILE).write_bytes((artifact / contract.TOKENIZER_FILE).read_bytes())
    with pytest.raises(ValueError, match="Checksum mismatch"):
        export_litertlm(str(copy), check=False)


def test_cli_bundles_an_exported_artifact(bundled, tmp_path, capsys):
    from converters import cli

    _, artifact, _ = bundled
    assert cli.main(["export", "--format", "litertlm", "--preset", str(artifact),
                     "--out", str(tmp_path / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert "falcon_tiny_random_fp32.litertlm" in out
    assert "LiteRT-LM Engine on CPU: ran, same text as falcon_tf.lite" in out
    data = json.loads((artifact / "manifest.json").read_text())
    export_tflite_causal_lm("falcon_tiny_random", artifact.parent, variants=("fp32",),
                            model=bundled[0].backbone, tokenizer=bundled[0].tokenizer,
                            cache_length=CACHE, prefill_lengths=PREFILL)
    # The .tflite was written again: its bundle entry, now stale, is gone.
    assert "litertlm" in data["causal_lm"]
    assert "litertlm" not in json.loads((artifact / "manifest.json").read_text())["causal_lm"]
