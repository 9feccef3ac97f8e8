"""The causal LM exported: SavedModel signatures and TFLite prefill/decode files,
each run in its runtime and compared with Keras on the same weights."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import FAMILY, randomize, tiny_kwargs
from converters.export_saved_model import export_saved_model
from converters.export_tflite_causal_lm import export_tflite_causal_lm
from falcon_tf import FalconBackbone, FalconCausalLM, contract
from test_gpu_delegate import gpu_available  # noqa: F401  (fixture)

pytest.importorskip("ai_edge_litert")

CACHE, PREFILL = 64, (8, 16)
PROMPTS = [[5, 17, 3, 9, 22], [8, 1, 30, 2, 11, 7, 25, 4, 19, 6, 13, 27, 14, 28, 10, 12, 29, 31,
                               33, 40]]  # 5 tokens, and 20 (more than one prefill chunk)
NEW = 32
LOGIT_TOL = 1e-4
COSINE = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.999}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=CACHE)
    randomize(lm.backbone, seed=4, scale=0.1)
    export_saved_model("falcon_tiny_random", out, model=lm.backbone, tokenizer=lm.tokenizer)
    entries = export_tflite_causal_lm("falcon_tiny_random", out, model=lm.backbone,
                                      variants=tuple(COSINE), cache_length=CACHE,
                                      prefill_lengths=PREFILL, tokenizer=lm.tokenizer)
    return lm, out / "falcon_tiny_random", entries


def test_saved_model_generate_and_steps_match_keras(exported):
    from falcon_tf.serving import FalconCausalLM as ServingLM

    lm, artifact, _ = exported
    data = json.loads((artifact / "manifest.json").read_text())
    version = data["saved_model"]["versions"][max(data["saved_model"]["versions"], key=int)]
    assert version["parity"]["prefill+decode"]["max_abs_diff_vs_keras"] <= LOGIT_TOL
    assert version["parity"]["generate"]["greedy_tokens_equal_keras"]
    assert {"prefill", "decode", "generate"} <= set(version["signatures"])
    served = ServingLM.from_preset(str(artifact), cache_length=CACHE)
    max_length = max(map(len, PROMPTS)) + NEW
    expected = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    assert served.generate(PROMPTS, max_length=max_length, stop_token_ids=None) == expected
    assert served.generate("the cat", max_length=16) == lm.generate("the cat", max_length=16)
    stop = expected[0][len(PROMPTS[0]) + 3]
    assert served.generate(PROMPTS, max_length=max_length, stop_token_ids=[stop]) == \
        lm.generate(PROMPTS, max_length=max_length, stop_token_ids=[stop])


def test_tflite_files_record_their_parity_and_hold_every_signature(exported):
    from ai_edge_litert.interpreter import Interpreter

    lm, artifact, entries = exported
    data = json.loads((artifact / "manifest.json").read_text())
    section = data["causal_lm"]
    assert section["cache_len"] == CACHE and section["prefill_lengths"] == list(PREFILL)
    assert section["stop_token_ids"] == [lm.tokenizer.end_token_id]
    assert (artifact / contract.TOKENIZER_FILE).is_file()
    for variant, entry in entries.items():
        assert entry["parity"]["cosine_vs_keras"] >= COSINE[variant], variant
        assert entry["parity"]["greedy_tokens_equal_keras"], variant
        signatures = Interpreter(model_path=str(artifact / entry["file"])).get_signature_list()
        assert sorted(signatures) == ["decode", "prefill_16", "prefill_8"]
        names = contract.cache_names(lm.backbone.num_layers)
        assert sorted(signatures["decode"]["inputs"]) == sorted(
            ["tokens", "input_pos", "mask"] + names)
        assert sorted(signatures["decode"]["outputs"]) == sorted(["logits"] + names)
    assert entries["fp32"]["parity"]["max_abs_diff_vs_keras"] <= LOGIT_TOL
    # One copy of the weights serves all three signatures.
    assert entries["fp32"]["bytes"] < 1.3 * lm.backbone.count_params() * 4
    assert entries["int8"]["bytes"] < 0.8 * entries["fp32"]["bytes"]


def test_tflite_generate_matches_keras(exported):
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.lite.causal_lm import run_steps

    lm, artifact, _ = exported
    lite = LiteLM.from_preset(str(artifact), variant="fp32", num_threads=2)
    max_length = max(map(len, PROMPTS)) + NEW
    expected = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    streamed = []
    got = lite.generate(PROMPTS, max_length=max_length, stop_token_ids=None,
                        on_token=lambda row, token: streamed.append((row, token)))
    assert got == expected
    assert [t for r, t in streamed if r == 1] == expected[1][len(PROMPTS[1]):]
    assert lite.generate("the cat", max_length=16) == lm.generate("the cat", max_length=16)
    # Every step's logits, prefill (a 16-chunk and a padded 8-chunk) and decode, against
    # the uncached forward.
    sequence = expected[1]
    logits = run_steps(lite._runners, sequence, len(PROMPTS[1]))
    full = lm({"token_ids": np.array([sequence], "int32"),
               "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()[0]
    np.testing.assert_allclose(logits, full, atol=LOGIT_TOL)


def test_tflite_loader_checks_before_running(exported, tmp_path):
    from falcon_tf.lite import FalconCausalLM as LiteLM

    _, artifact, _ = exported
    lite = LiteLM.from_preset(str(artifact), variant="fp32")
    lite._runners.run = lambda *a: pytest.fail("the interpreter ran")
    for kwargs, message in [
        (dict(inputs=[list(range(1, 70))]), "more than the cache holds"),
        (dict(inputs=PROMPTS, max_length=CACHE + 1), "beyond the cache's capacity"),
        (dict(inputs=[[]]), "Prompt 0 is empty"),
        (dict(inputs=PROMPTS, stop_token_ids=[1024]), "`stop_token_ids` must be ids"),
        (dict(inputs=[[1, 5000]]), "outside"),
    ]:
        kwargs.setdefault("stop_token_ids", None)
        with pytest.raises(ValueError, match=message):
            lite.generate(**kwargs)
    with pytest.raises(ValueError, match="`variant` 'int4' of the causal LM is not exported"):
        LiteLM.from_preset(str(artifact), variant="int4")


@pytest.mark.parametrize("variant", ["7b", "40b"])
def test_rotary_and_grouped_variants_export_and_match(variant, tmp_path):
    from falcon_tf.lite import FalconCausalLM as LiteLM

    backbone = randomize(FalconBackbone(**tiny_kwargs(vocabulary_size=37), **FAMILY[variant]),
                         scale=0.2)
    entries = export_tflite_causal_lm("tiny", tmp_path, model=backbone, variants=("fp32",),
                                      cache_length=32, prefill_lengths=(8,))
    assert entries["fp32"]["parity"]["max_abs_diff_vs_keras"] <= LOGIT_TOL
    lite = LiteLM.from_preset(str(tmp_path / "tiny"), variant="fp32")
    lm = FalconCausalLM(backbone, cache_length=32)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert lite.generate(prompts, max_length=30, stop_token_ids=None) == lm.generate(
        prompts, max_length=30, stop_token_ids=None)
    if os.environ.get("FALCON_TF_REQUIRE_GPU") == "1" or entries["fp32"][
            "gpu_fully_accelerated"] is not None:
        assert entries["fp32"]["gpu_fully_accelerated"] is True


GPU_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from falcon_tf.lite import FalconCausalLM
    from falcon_tf.lite.causal_lm import run_steps
    artifact, variant, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cpu = FalconCausalLM.from_preset(artifact, variant=variant)
    gpu = FalconCausalLM.from_preset(artifact, variant=variant, accelerator="gpu")
    a = run_steps(cpu._runners, list(range(1, 40)), 13)
    b = run_steps(gpu._runners, list(range(1, 40)), 13)
    cosine = float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))
    same = cpu.generate(prompts, max_length=40, stop_token_ids=None) == gpu.generate(
        prompts, max_length=40, stop_token_ids=None)
    print(json.dumps({"cosine": cosine, "same_tokens": same,
                      "tensorflow_loaded": "tensorflow" in sys.modules}))
""")


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_gpu_variants_run_every_signature_on_the_gpu(exported, gpu_available,  # noqa: F811
                                                     variant, tmp_path):
    _, artifact, entries = exported
    assert entries[variant]["gpu_fully_accelerated"] is True
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    proc = subprocess.run([sys.executable, "-c", GPU_CHILD, str(artifact), variant,
                           json.dumps(PROMPTS)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cosine"] >= 0.999
    assert result["same_tokens"]
    assert not result["tensorflow_loaded"]


def test_cli_generate_streams_the_same_text_on_every_runtime(exported, capsys):
    import io

    from falcon_tf import cli

    lm, artifact, _ = exported
    expected = "the cat" + lm.generate("the cat", max_length=20, strip_prompt=True)
    for runtime in ("saved_model", "tflite"):
        out = io.StringIO()
        text = cli.generate(str(artifact), "the cat", runtime=runtime, max_length=20, out=out)
        assert text == expected, runtime
        assert out.getvalue() == expected + "\n"
    assert cli.main(["generate", "--preset", str(artifact), "--runtime", "tflite", "--prompt",
                     "the cat", "--max-length", "20"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert cli.main(["generate", "--preset", str(artifact), "--runtime", "tflite", "--prompt",
                     "x", "--variant", "int4"]) == 2
    assert "'int4' of the causal LM is not exported" in capsys.readouterr().err


LOADER_IN_OTHER_ENV = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import importlib.util
    from falcon_tf.lite import FalconCausalLM
    artifact, variants, prompts, max_length = sys.argv[2], json.loads(sys.argv[3]), \\
        json.loads(sys.argv[4]), int(sys.argv[5])
    out = {v: FalconCausalLM.from_preset(artifact, variant=v).generate(
        prompts, max_length=max_length, stop_token_ids=None) for v in variants}
    import numpy
    print(json.dumps({"tokens": out, "numpy": numpy.__version__,
                      "tflite_runtime": "tflite_runtime" in sys.modules,
                      "ai_edge_litert": "ai_edge_litert" in sys.modules,
                      "tensorflow_installed": importlib.util.find_spec("tensorflow") is not None}))
""")


def run_lite_lm_in(python, artifact, variants, max_length):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [python, "-c", LOADER_IN_OTHER_ENV, repo, str(artifact), json.dumps(variants),
         json.dumps(PROMPTS), str(max_length)], capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_variants_claiming_tflite_runtime_2_14_generate_on_it(exported, tflite_runtime_2_14):
    lm, artifact, entries = exported
    claimed = [v for v, e in entries.items() if e["oldest_runtime"] == "tflite-runtime 2.14"]
    assert set(claimed) == {"fp32", "fp16", "int8"}
    max_length = max(map(len, PROMPTS)) + 12
    result = run_lite_lm_in(tflite_runtime_2_14, artifact, claimed, max_length)
    assert result["tflite_runtime"] and not result["ai_edge_litert"]
    assert result["numpy"].startswith("1.")
    expected = lm.generate(PROMPTS, max_length=max_length, stop_token_ids=None)
    for variant in claimed:
        assert result["tokens"][variant] == expected, variant


@pytest.mark.slow
def test_lite_causal_lm_runs_without_tensorflow(exported, litert_only):
    lm, artifact, _ = exported
    max_length = max(map(len, PROMPTS)) + 12
    result = run_lite_lm_in(litert_only, artifact, ["fp32"], max_length)
    assert result["ai_edge_litert"] and not result["tensorflow_installed"]
    assert result["tokens"]["fp32"] == lm.generate(PROMPTS, max_length=max_length,
                                                   stop_token_ids=None)
