"""The `falcon-tf` command and the docstring examples."""

import doctest
import os

import pytest

import falcon_tf.model.backbone
import falcon_tf.text.bpe
import falcon_tf.model.causal_lm
import falcon_tf.text.causal_lm_preprocessor
import falcon_tf.runtime.evaluation
import falcon_tf.runtime.samplers
import falcon_tf.text.tokenizer
from converters import cli, demo


def test_demo_tells_the_story_on_every_runtime(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--seq", "16"]) == 0
    out = capsys.readouterr().out
    model_line, export_line, tflite_title, header, *rest = out.strip().splitlines()
    assert model_line.startswith("falcon_tiny_trained: 1,055,488 parameters")
    assert float(model_line.split("max|diff| ")[1].split(",")[0]) <= 1e-5  # XLA vs eager
    assert float(export_line.split("keras_preset ")[1].split(";")[0]) == 0.0
    for signature in ("serving_default", "serving_xla"):
        assert float(export_line.split(f"{signature} ")[1].split(",")[0]) <= 1e-5
    assert (tmp_path / "falcon_tiny_trained" / "keras_preset" / "model.weights.h5").is_file()
    assert "TFLite" in tflite_title and header.split()[:2] == ["variant", "bytes"]
    tflite_rows, (blank, lm_title, lm_header), rest = rest[:4], rest[4:7], rest[7:]
    cosines = {row.split()[0]: float(row.split()[3]) for row in tflite_rows}
    assert sorted(cosines) == ["fp16", "fp32", "int4", "int8"]
    assert cosines["fp32"] >= 0.99999 and cosines["int8"] >= 0.999 and cosines["int4"] >= 0.99
    assert "causal LM" in lm_title and "held-out tokens" in lm_title
    assert lm_header.split()[:3] == ["runtime", "bytes", "perplexity"]
    rows, (gap, prompt_line), texts = rest[:6], rest[6:8], rest[8:]
    table = {}
    for row in rows:
        label = " ".join(row.split()[:2]) if row.startswith("tflite") else row.split()[0]
        table[label] = row[len(label):].split()
    assert list(table) == ["keras", "saved_model", "tflite fp32", "tflite fp16", "tflite int8",
                           "tflite int4"]
    keras_ppl = float(table["keras"][1])
    assert keras_ppl < 1024  # a trained model: far below its vocabulary size (2048)
    # Δ perplexity against Keras within each variant's target (percent).
    limits = {"saved_model": 1e-3, "tflite fp32": 1e-3, "tflite fp16": 0.1, "tflite int8": 1.0,
              "tflite int4": 5.0}
    for label, limit in limits.items():
        columns = table[label]
        assert abs(float(columns[2].rstrip("%"))) <= limit, (label, columns)
    for label in ("saved_model", "tflite fp32"):
        assert table[label][3] == "yes", label  # the same greedy text as Keras
    assert blank == gap == "" and prompt_line == "prompt       | " + demo.DEMO_PROMPT
    assert len(texts) == 6 and texts[0].startswith("keras XLA    | ")
    assert texts[0].split("| ", 1)[1] == texts[1].split("| ", 1)[1]  # SavedModel


def test_demo_with_a_bad_preset_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["demo", "--preset", "no_such_preset", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and "local directory" in err and "Traceback" not in err


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path, capsys):
    # --out under a file: the error names the path, with no traceback.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "artifacts"
    assert cli.main(["export", "--preset", "falcon_tiny_random", "--format", "saved_model",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("falcon-tf: error: ") and str(blocker) in err, err
    assert "Traceback" not in err


def test_int4_projections_of_a_backbone_export_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", "--preset", "falcon_tiny_random", "--format", "tflite",
                  "--variants", "int4", "--int4-projections", "all", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--int4-projections applies to --task causal_lm" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_presets_lists_every_builtin(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "falcon_refinedweb_1b_en" in out and "falcon_tiny_random" in out
    assert "falcon_tiny_trained" in out and "embedded (trained weights" in out


def test_docstring_examples_run():
    result = doctest.testmod(falcon_tf.model.backbone, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
    for module in (falcon_tf.model.causal_lm, falcon_tf.text.tokenizer, falcon_tf.text.bpe,
                   falcon_tf.text.causal_lm_preprocessor, falcon_tf.runtime.samplers, falcon_tf.runtime.evaluation):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


def test_generate_with_keras_streams_text(capsys):
    from falcon_tf import FalconCausalLM

    assert cli.main(["generate", "--prompt", "the cat", "--max-length", "12"]) == 0
    lm = FalconCausalLM.from_preset(cli.DEFAULT_PRESET, cache_length=12)
    assert capsys.readouterr().out == lm.generate("the cat", max_length=12) + "\n"


def test_commands_print_no_third_party_notices():
    """TensorFlow's load-time absl lines and its CUDA probe stay off the terminal."""
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "converters.cli", "generate", "--prompt",
                           "The falcon flew over", "--max-length", "24"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    noise = [line for line in proc.stderr.splitlines()
             if re.match(r"[IWE]\d{4} ", line) or "absl::InitializeLog" in line]
    assert noise == [] and proc.stderr == ""
    assert proc.stdout.startswith("The falcon flew over")


def test_generate_with_the_trained_default_writes_known_words(capsys):
    """Most words the trained preset writes are words of its held-out chapters
    (the random preset's are not)."""
    import re

    from falcon_tf import FalconTokenizer

    from falcon_tf.runtime import evaluation

    tokenizer = FalconTokenizer.from_preset(cli.DEFAULT_PRESET)
    known = set(re.findall(r"[A-Za-z]+", tokenizer.detokenize(
        evaluation.preset_token_ids(cli.DEFAULT_PRESET).tolist())))

    def known_fraction(preset):
        cli.generate(preset, "The falcon flew over", max_length=48)
        text = capsys.readouterr().out[len("The falcon flew over"):]
        words = re.findall(r"[A-Za-z]+", text)
        return sum(w in known for w in words) / max(len(words), 1)

    assert known_fraction(cli.DEFAULT_PRESET) >= 0.9
    assert known_fraction("falcon_tiny_random") < 0.5


def test_eval_scores_the_trained_default_on_its_heldout_chapters(capsys):
    import json

    from falcon_tf import FalconBackbone
    from falcon_tf.checkpoints.handles import embedded_dir

    assert cli.main(["eval", "--runtime", "keras", "--prompts", "2"]) == 0
    line = capsys.readouterr().out.strip()
    with open(os.path.join(embedded_dir(FalconBackbone.presets[cli.DEFAULT_PRESET]),
                           "metadata.json")) as f:
        recorded = json.load(f)["heldout_perplexity"]
    assert line.startswith(f"{cli.DEFAULT_PRESET} keras: perplexity ")
    assert float(line.split("perplexity ")[1].split()[0]) == \
        pytest.approx(recorded["perplexity"], abs=1e-4)
    assert f"on {recorded['tokens']:,} held-out tokens" in line
    assert line.endswith("identical to Keras: 2/2")
    assert cli.main(["eval", "--preset", "falcon_tiny_random"]) == 2
    assert "held-out" in capsys.readouterr().err
