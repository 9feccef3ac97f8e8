"""FalconBackbone against keras-hub's on the same weights, and its own contract."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAMILY, SEED_INPUT, SEED_KWARGS, padded_batch, randomize, tiny_kwargs
from falcon_tf import FalconBackbone
from falcon_tf.checkpoints.keras_hub import named_variables

FLOAT32_TOL = 1e-5  # max abs difference allowed against keras-hub, float32


def load_keras_hub_weights_into_ours(kh_model, tmp_path):
    """Round trip through keras-hub's own preset writer: the real file format."""
    kh_model.save_to_preset(str(tmp_path / "kh"))
    return FalconBackbone.from_preset(str(tmp_path / "kh"))


@pytest.mark.parametrize("member", sorted(FAMILY))
def test_variable_specs_are_the_models_variables(member):
    """`FalconConfig.variable_specs` (names, shapes, order; what the checkpoint
    maps and the parameter count derive from) is what the built model holds."""
    model = FalconBackbone(**tiny_kwargs(num_attention_heads=4), **FAMILY[member])
    specs = model.falcon_config.variable_specs()
    assert [(name, tuple(var.shape)) for name, var in named_variables(model).items()] == \
        list(specs.items())
    assert model.falcon_config.parameter_count() == model.count_params()


@pytest.mark.parametrize("heads", [4, 3], ids=["power_of_two_heads", "three_heads"])
def test_matches_keras_hub_with_left_and_right_padding(keras_hub, tmp_path, heads):
    kwargs = tiny_kwargs(num_attention_heads=heads)
    reference = randomize(keras_hub.models.FalconBackbone(**kwargs))
    ours = load_keras_hub_weights_into_ours(reference, tmp_path)
    x = padded_batch(kwargs["vocabulary_size"])
    expected = reference(x).numpy()
    np.testing.assert_allclose(ours(x).numpy(), expected, rtol=0, atol=FLOAT32_TOL)
    np.testing.assert_allclose(ours.compiled_call(x).numpy(), expected, rtol=0,
                               atol=FLOAT32_TOL)


@pytest.mark.parametrize("heads", [8, 6])
def test_alibi_slopes_match_keras_hub_for_many_heads(keras_hub, tmp_path, heads):
    kwargs = tiny_kwargs(num_attention_heads=heads, head_dim=4, num_layers=1)
    reference = randomize(keras_hub.models.FalconBackbone(**kwargs), seed=1)
    ours = load_keras_hub_weights_into_ours(reference, tmp_path)
    x = padded_batch(kwargs["vocabulary_size"], seq=9, seed=1)
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=0, atol=FLOAT32_TOL)


def test_matches_keras_hub_at_sequence_length_one(keras_hub, tmp_path):
    kwargs = tiny_kwargs()
    reference = randomize(keras_hub.models.FalconBackbone(**kwargs))
    ours = load_keras_hub_weights_into_ours(reference, tmp_path)
    x = {"token_ids": np.array([[5], [12]], "int32"), "padding_mask": np.ones((2, 1), "int32")}
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=0, atol=FLOAT32_TOL)
    np.testing.assert_allclose(ours.compiled_call(x).numpy(), reference(x).numpy(), rtol=0,
                               atol=FLOAT32_TOL)


def test_matches_keras_hub_with_holes_in_the_padding_mask(keras_hub, tmp_path):
    # ALiBi positions count only real tokens; a mask with holes checks that.
    kwargs = tiny_kwargs()
    reference = randomize(keras_hub.models.FalconBackbone(**kwargs))
    ours = load_keras_hub_weights_into_ours(reference, tmp_path)
    x = padded_batch(kwargs["vocabulary_size"])
    x["padding_mask"][2] = [1, 0, 1, 1, 0, 1, 1]
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=0, atol=FLOAT32_TOL)


def test_xla_matches_eager_and_predict_uses_xla():
    model = randomize(FalconBackbone(**tiny_kwargs()))
    x = padded_batch(13, seq=16)
    eager = model(x).numpy()
    np.testing.assert_allclose(model.compiled_call(x).numpy(), eager, rtol=0, atol=FLOAT32_TOL)
    assert model.jit_compile is True
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, rtol=0, atol=FLOAT32_TOL)


def test_seed_example_runs():
    model = FalconBackbone(**SEED_KWARGS)
    out = model(SEED_INPUT)
    assert tuple(out.shape) == (1, 12, 32)
    assert np.isfinite(out.numpy()).all()


def test_output_shape_and_parameter_count_match_keras_hub(keras_hub):
    kwargs = tiny_kwargs(num_attention_heads=3)
    ours, reference = FalconBackbone(**kwargs), keras_hub.models.FalconBackbone(**kwargs)
    assert ours.count_params() == reference.count_params() == ours.falcon_config.parameter_count()
    x = padded_batch(13, seq=5)
    assert tuple(ours(x).shape) == (3, 5, kwargs["hidden_dim"])


def test_config_round_trip():
    model = FalconBackbone(**tiny_kwargs(), layer_norm_epsilon=1e-3, attention_dropout_rate=0.1,
                           feedforward_dropout_rate=0.2, dtype="mixed_bfloat16", name="mine")
    config = model.get_config()
    clone = FalconBackbone.from_config(config)
    assert clone.get_config() == config
    assert clone.dtype_policy.name == "mixed_bfloat16"
    assert clone.layer_norm_epsilon == 1e-3 and clone.name == "mine"


# Each architecture argument, changed on its own, must change the output:
# field -> (the base config's extra arguments, the changed value).
_CHANGES = {
    "vocabulary_size": ({}, 14),
    "num_layers": ({}, 3),
    "num_attention_heads": ({}, 2),
    "hidden_dim": ({}, 48),
    "intermediate_dim": ({}, 64),
    "layer_norm_epsilon": ({}, 0.5),
    "num_kv_heads": ({}, 2),
    "position_embedding": ({}, "rotary"),
    "rope_theta": ({"position_embedding": "rotary"}, 100.0),
    "parallel_attention": ({}, True),
    "separate_mlp_layer_norm": ({"parallel_attention": True}, True),
    "use_bias": ({}, False),
}


@pytest.mark.parametrize("field", sorted(_CHANGES))
def test_each_architecture_argument_changes_the_output(field):
    extra, value = _CHANGES[field]
    base_kwargs = {**tiny_kwargs(), **extra}
    base = FalconBackbone(**base_kwargs)
    changed = FalconBackbone(**{**base_kwargs, field: value})
    # Copy every weight that has the same name and shape, so only the argument differs.
    base_vars, changed_vars = named_variables(base), named_variables(changed)
    rng = np.random.default_rng(3)
    for name, var in base_vars.items():
        var.assign(rng.normal(0, 0.3, tuple(var.shape)).astype("float32"))
        if name in changed_vars and tuple(changed_vars[name].shape) == tuple(var.shape):
            changed_vars[name].assign(var.numpy())
    x = padded_batch(13)
    a, b = base(x).numpy(), changed(x).numpy()
    assert a.shape != b.shape or np.abs(a - b).max() > 1e-3
    assert getattr(changed, field) == value


@pytest.mark.parametrize("field", ["attention_dropout_rate", "feedforward_dropout_rate"])
def test_dropout_only_when_training(field):
    model = randomize(FalconBackbone(**tiny_kwargs(), **{field: 0.5}))
    x = padded_batch(13)
    inference = model(x).numpy()
    np.testing.assert_array_equal(model(x, training=False).numpy(), inference)
    assert np.abs(model(x, training=True).numpy() - inference).max() > 1e-3


def test_unknown_keyword_argument_raises():
    with pytest.raises(ValueError, match="num_query_groups"):
        FalconBackbone(**tiny_kwargs(), num_query_groups=2)


@pytest.mark.parametrize("override, field", [
    ({"hidden_dim": 30, "num_attention_heads": 4}, "hidden_dim"),
    ({"vocabulary_size": 0}, "vocabulary_size"),
    ({"num_layers": -1}, "num_layers"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"intermediate_dim": 2.5}, "intermediate_dim"),
    ({"attention_dropout_rate": 1.0}, "attention_dropout_rate"),
    ({"feedforward_dropout_rate": -0.1}, "feedforward_dropout_rate"),
    ({"layer_norm_epsilon": 0}, "layer_norm_epsilon"),
    ({"dtype": "int8"}, "dtype"),
])
def test_invalid_arguments_name_the_argument(override, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        FalconBackbone(**{**tiny_kwargs(), **override})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "mixed_bfloat16",
                                   "mixed_float16"])
def test_dtypes_run_close_to_float32(dtype):
    import keras

    reference = randomize(FalconBackbone(**tiny_kwargs()), scale=0.1)
    model = FalconBackbone(**tiny_kwargs(), dtype=keras.DTypePolicy(dtype))
    for var, ref in zip(model.weights, reference.weights):
        var.assign(ref.numpy())
    x = padded_batch(13)
    out = model(x)
    assert str(out.dtype.name) == model.dtype_policy.compute_dtype
    # Every layer takes the model's policy; the attention bias still computes in float32.
    for layer in model._flatten_layers():
        if not isinstance(layer, keras.layers.InputLayer):
            assert layer.compute_dtype == model.dtype_policy.compute_dtype, layer.name
    assert [b.dtype.name for b in model.attention_bias(x["padding_mask"])] == ["float32"] * 3
    out = out.numpy().astype("float32")
    assert np.isfinite(out).all()
    # 16-bit matmuls; softmax and layer norm in float32 keep the error small.
    tolerance = 1e-5 if dtype == "float32" else 0.15
    np.testing.assert_allclose(out, reference(x).numpy(), rtol=0, atol=tolerance)


def test_token_embedding_is_the_tied_lm_head():
    model = randomize(FalconBackbone(**tiny_kwargs()))
    hidden = model(padded_batch(13))
    logits = model.token_embedding(hidden, reverse=True).numpy()
    expected = hidden.numpy() @ model.token_embedding.embeddings.numpy().T
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_another_keras_backend_fails_with_a_fix():
    env = dict(os.environ, KERAS_BACKEND="numpy")
    proc = subprocess.run([sys.executable, "-c", "from falcon_tf import FalconBackbone"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "KERAS_BACKEND=tensorflow" in proc.stderr


def test_import_is_light():
    code = ("import sys, falcon_tf; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# What each folder of falcon_tf may not import (prefixes), read from the
# source: the layers you see in the folder names. Nothing imports upward into
# `converters` (exporters, the CLI); `checkpoints` is handed the class it
# builds and reads only the architecture record and the dtype argument of the
# model; the artifact facts and the runtimes' shared checks need no model; the
# edge and server loaders run the exported graph, never the Keras model.
_MODEL_CLASSES = ("falcon_tf.model.backbone", "falcon_tf.model.causal_lm",
                  "falcon_tf.model.decoder_block", "falcon_tf.model.attention",
                  "falcon_tf.model.token_embedding")
_KERAS_TEXT = ("falcon_tf.text.tokenizer", "falcon_tf.text.causal_lm_preprocessor")
_FORBIDDEN = {
    "artifacts": ("falcon_tf.model", "falcon_tf.text", "falcon_tf.checkpoints",
                  "falcon_tf.runtime", "falcon_tf.lite", "falcon_tf.serving", "falcon_tf._keras"),
    "checkpoints": _MODEL_CLASSES + _KERAS_TEXT + ("falcon_tf.runtime", "falcon_tf.lite",
                                                   "falcon_tf.serving"),
    "lite": ("falcon_tf.model", "falcon_tf._keras", "falcon_tf.serving") + _KERAS_TEXT,
    "serving": ("falcon_tf.model", "falcon_tf._keras", "falcon_tf.lite") + _KERAS_TEXT,
}


def test_each_folder_of_falcon_tf_imports_only_the_layers_below_it():
    import ast
    import pathlib

    import falcon_tf
    from falcon_tf import _moved

    root = pathlib.Path(falcon_tf.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        folder = path.relative_to(root).parts[0]
        forbidden = ("converters",) + _FORBIDDEN.get(folder, ()) + tuple(_moved.MOVED)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    found.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    assert found == []
    # The top level keeps only what every layer stands on.
    assert sorted(p.name for p in root.glob("*.py")) == [
        "__init__.py", "_keras.py", "_lazy.py", "_moved.py", "json_file.py", "progress.py",
        "untrusted.py"]
