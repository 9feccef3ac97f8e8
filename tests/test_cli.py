"""The `falcon-tf` command and the docstring examples."""

import doctest

import falcon_tf.backbone
import falcon_tf.causal_lm
import falcon_tf.samplers
import falcon_tf.tokenizer
from falcon_tf import cli


def test_demo_prints_parity_and_latency(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--seq", "16"]) == 0
    line, serving_line, tflite_title, header, *rows = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("falcon_tiny_random: XLA vs eager max|diff| ")
    for signature in ("serving_default", "serving_xla"):
        diff = float(serving_line.split(f"{signature} max|diff| ")[1].split(",")[0])
        assert diff <= 1e-5
    xla_vs_eager = float(line.split("max|diff| ")[1].split(",")[0])
    reload_diff = float(line.split("max|diff| ")[2].split(",")[0])
    assert xla_vs_eager <= 1e-5 and reload_diff == 0.0
    assert (tmp_path / "falcon_tiny_random" / "keras_preset" / "model.weights.h5").is_file()
    assert "TFLite" in tflite_title and header.split()[:2] == ["variant", "bytes"]
    tflite_rows, lm_title, lm_header, lm_rows = rows[:4], rows[4], rows[5], rows[6:]
    cosines = {row.split()[0]: float(row.split()[3]) for row in tflite_rows}
    assert sorted(cosines) == ["fp16", "fp32", "int4", "int8"]
    assert cosines["fp32"] >= 0.99999 and cosines["int8"] >= 0.999 and cosines["int4"] >= 0.99
    assert "causal LM" in lm_title and lm_header.split()[0] == "runtime"
    same = {" ".join(row.split()[:-3 if row.startswith("tflite") else -2]): row.split()[
        -3 if row.startswith("tflite") else -2] for row in lm_rows}
    assert same == {"keras XLA": "yes", "saved_model": "yes", "tflite fp32": "yes",
                    "tflite fp16": "yes", "tflite int8": "yes"}


def test_demo_with_a_bad_preset_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["demo", "--preset", "no_such_preset", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and "local directory" in err and "Traceback" not in err


def test_presets_lists_every_builtin(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "falcon_refinedweb_1b_en" in out and "falcon_tiny_random" in out


def test_docstring_examples_run():
    result = doctest.testmod(falcon_tf.backbone, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
    for module in (falcon_tf.causal_lm, falcon_tf.tokenizer, falcon_tf.samplers):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


def test_generate_with_keras_streams_text(capsys):
    from falcon_tf import FalconCausalLM

    assert cli.main(["generate", "--prompt", "the cat", "--max-length", "12"]) == 0
    lm = FalconCausalLM.from_preset("falcon_tiny_random", cache_length=12)
    assert capsys.readouterr().out == lm.generate("the cat", max_length=12) + "\n"
