"""Presets of a model quantized with Keras (`FalconBackbone.quantize`).

Its config.json keeps the DTypePolicyMap. Its weights are keras-hub's layout
for keras-hub's architecture (each layer's variables in Keras's saving order,
our fused q/k/v split into keras-hub's three layers), so that keras-hub's
`from_preset` loads them, and falcon_tf's own layout (datasets named by Keras
variable path) for the other family members; both are read as strictly as
float weights.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from falcon_tf.checkpoints.handles import CONFIG_FILE
from falcon_tf.checkpoints.keras_hub import (FALCON_TF_REGISTERED_NAME, _QKV, _QKV_PARTS,
                                             _datasets, _is_bfloat16, _open_weights,
                                             _write_dataset, keras_hub_groups)
from falcon_tf.json_file import read_json
from falcon_tf.untrusted import check_weight

# --------------------------------------------------------------------------
# Weights of a model quantized with Keras: named by each variable's Keras path
# --------------------------------------------------------------------------

def quantized_layout(model):
    """Keras variable path -> variable, every variable of `model` once."""
    layout = {}
    for var in model.weights:
        if var.path in layout:  # two variables, one name: the file could not tell them apart
            raise ValueError(f"Two variables share the path {var.path}.")
        layout[var.path] = var
    return layout


def write_quantized_weights(path, model):
    """Every variable as a dataset named by its path, in its own dtype (int8
    kernels stay int8; bfloat16 marked as Keras marks it)."""
    with h5py.File(path, "w") as f:
        for name, var in quantized_layout(model).items():
            _write_dataset(f, name, var.numpy())


def _read_like(found, name, like, path):
    """Dataset `name` of `path` as an array for variable `like`: present, of its
    shape and kind of dtype (integer for integer variables), floats finite."""
    from falcon_tf._keras import keras

    if name not in found:
        raise ValueError(f"{path}: dataset {name} is missing.")
    dataset = found[name]
    if tuple(dataset.shape) != tuple(like.shape):
        raise ValueError(f"{path}: dataset {name} has shape {tuple(dataset.shape)}; the "
                         f"model needs {tuple(like.shape)}.")
    integer = str(like.dtype).startswith(("int", "uint"))
    kind = "f" if _is_bfloat16(dataset) else dataset.dtype.kind
    if (kind in "iu") != integer or kind not in "iuf":
        raise ValueError(f"{path}: dataset {name} has dtype {dataset.dtype}; the model "
                         f"needs {like.dtype}.")
    try:
        array = np.asarray(dataset[()])
    except (OSError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: dataset {name} cannot be read: {err}") from None
    if _is_bfloat16(dataset):
        import ml_dtypes

        array = array.view(ml_dtypes.bfloat16)
    if not integer:
        check_weight(array, path, f"dataset {name}")
    return keras.ops.convert_to_numpy(keras.ops.cast(array, like.dtype))


def _refuse_unused(found, expected, path):
    unused = sorted(set(found) - set(expected))
    if unused:
        raise ValueError(f"{path}: dataset(s) not part of this quantized FalconBackbone: "
                         f"{', '.join(unused[:5])}" + (" ..." if len(unused) > 5 else ""))


def load_quantized_weights(model, path):
    """Sets every variable of a quantized `model` from `path` (falcon_tf's own
    layout): the file must hold exactly its variables (by path), each read by
    `_read_like`."""
    layout = quantized_layout(model)
    with _open_weights(path) as f:
        found = _datasets(f, path)
        _refuse_unused(found, layout, path)
        for name, var in layout.items():
            var.assign(_read_like(found, name, var, path))


# --------------------------------------------------------------------------
# Weights of a model quantized with Keras, in keras-hub's layout: each layer's
# variables in Keras's own saving order; our fused q/k/v projection split into
# keras-hub's query, key and value EinsumDense layers (every quantized weight
# of a column stays with its column, so the split is exact both ways)
# --------------------------------------------------------------------------

def _saved(layer):
    """A layer's variables in the order Keras saves them: the names its
    `variable_serialization_spec` gives for its quantization mode that it holds
    (a layer without one: its own order)."""
    spec = getattr(layer, "variable_serialization_spec", None)
    if spec is None:
        return list(layer.weights)
    if getattr(layer, "lora_enabled", False):
        raise ValueError(f"Layer {layer.path} has LoRA enabled; a quantized preset holds "
                         f"merged weights only.")
    by_name = {var.path.rsplit("/", 1)[-1]: var for var in layer.weights}
    return [by_name[name] for name in spec[layer.quantization_mode] if name in by_name]


def _qkv_templates(config, layer):
    """keras-hub's query, key and value layers (EinsumDense over heads), built
    with the policy of our fused `layer`: their variables' shapes and order."""
    from falcon_tf._keras import keras
    from falcon_tf.model.dtype_policy import own_policy

    fused = len(_saved(layer))
    templates = []
    for count in (config.num_attention_heads, config.kv_heads, config.kv_heads):
        template = keras.layers.EinsumDense(
            "bqm,muh->bquh", output_shape=(None, count, config.head_dim),
            bias_axes="uh" if config.use_bias else None, dtype=own_policy(layer))
        template.build((None, None, config.hidden_dim))
        templates.append(_saved(template))
    if any(len(t) != fused for t in templates):
        raise ValueError(f"Keras saves {layer.path} and an EinsumDense of the same "
                         f"quantization with different variables; keras-hub's layout cannot be "
                         f"written with this Keras version.")
    return templates


def _columns(array, shape):
    """`array` as (rows, columns), where a variable of `shape` has its output
    columns last: a kernel (inputs, outputs), a bias or scale (outputs,)."""
    rows = int(np.prod(shape[:-1])) if len(shape) else 1
    return np.reshape(array, (rows, -1))


def _split_qkv(fused, templates):
    """Our fused layer's saved arrays -> keras-hub's three layers' arrays: a
    variable per output column is cut into q, k and v; one shared by all
    columns (a float8 scale, int4 group indices) is copied to each."""
    parts = [[], [], []]
    for index, value in enumerate(fused):
        value = np.asarray(value)
        likes = [t[index] for t in templates]
        if all(np.size(like) == value.size for like in likes):
            for slot, like in enumerate(likes):
                parts[slot].append(value.reshape(like.shape))
            continue
        columns = _columns(value, value.shape)
        widths = [np.size(like) // columns.shape[0] for like in likes]
        cuts = np.split(columns, np.cumsum(widths)[:-1], axis=-1)
        for slot, (cut, like) in enumerate(zip(cuts, likes)):
            parts[slot].append(cut.reshape(like.shape))
    return parts


def _fuse_qkv(parts, fused, names, path):
    """keras-hub's three layers' arrays -> our fused layer's (the inverse of
    `_split_qkv`); a shared variable must hold one value in all three."""
    out = []
    for index, like in enumerate(fused):
        values = [p[index] for p in parts]
        if all(v.size == np.size(like) for v in values):
            if any(not np.array_equal(v, values[0]) for v in values[1:]):
                raise ValueError(f"{path}: datasets {', '.join(n[index] for n in names)} "
                                 f"differ; falcon_tf fuses query, key and value into one "
                                 f"projection, which holds one value for them.")
            out.append(values[0].reshape(like.shape))
            continue
        columns = [_columns(v, like.shape) for v in values]
        out.append(np.concatenate(columns, axis=-1).reshape(like.shape))
    return out


def _keras_hub_plan(model):
    """(our layer, keras-hub groups, each group's expected variables) for every layer."""
    config = model.falcon_config
    layers = {layer.path: layer for layer in model._flatten_layers() if layer.path}
    plan = []
    for layer_path, groups in keras_hub_groups(config).items():
        layer = layers[layer_path]
        likes = _qkv_templates(config, layer) if len(groups) > 1 else [_saved(layer)]
        plan.append((layer, groups, likes))
    return plan


def write_keras_hub_quantized(path, model):
    """model.weights.h5 of a Keras-quantized model, in keras-hub's layout."""
    with h5py.File(path, "w") as f:
        for layer, groups, likes in _keras_hub_plan(model):
            saved = [np.asarray(var.numpy()) for var in _saved(layer)]
            parts = _split_qkv(saved, likes) if len(groups) > 1 else [saved]
            for group, values in zip(groups, parts):
                for index, value in enumerate(values):
                    _write_dataset(f, f"{group}/vars/{index}", value)


def load_keras_hub_quantized(model, path):
    """Sets every variable of a quantized `model` from a keras-hub-layout file
    (keras-hub's own quantized presets included): exactly the datasets the
    layout names, each checked by `_read_like`."""
    plan = _keras_hub_plan(model)
    names = {id(layer): [[f"{g}/vars/{i}" for i in range(len(like))]
                         for g, like in zip(groups, likes)] for layer, groups, likes in plan}
    with _open_weights(path) as f:
        found = _datasets(f, path)
        _refuse_unused(found, [n for group in names.values() for g in group for n in g], path)
        for layer, groups, likes in plan:
            parts = [[_read_like(found, name, like, path) for name, like in zip(group, group_likes)]
                     for group, group_likes in zip(names[id(layer)], likes)]
            variables = _saved(layer)
            values = (_fuse_qkv(parts, variables, names[id(layer)], path)
                      if len(groups) > 1 else parts[0])
            for var, value in zip(variables, values):
                var.assign(value)


def keras_hub_policy_map(dtype, fuse):
    """A serialized DTypePolicyMap between keras-hub's layer paths (separate
    query/key/value layers) and ours (`fuse=True`: one q/k/v entry; False: the
    reverse). Entries of q, k and v must agree to be fused."""
    if not isinstance(dtype, dict) or dtype.get("class_name") != "DTypePolicyMap":
        return dtype
    config = dict(dtype.get("config") or {})
    entries = dict(config.get("policy_map") or {})
    for key in list(entries):
        if fuse and key.endswith("/attention/query_dense"):
            prefix = key[:-len("query_dense")]
            policies = [entries.pop(f"{prefix}{part}_dense", None) for part in _QKV_PARTS]
            if any(p != policies[0] for p in policies):
                raise ValueError(f"`dtype` maps {prefix}query_dense, key_dense and value_dense to "
                                 f"different policies; falcon_tf fuses them into one "
                                 f"projection, which takes one.")
            entries[f"{prefix}query_key_value"] = policies[0]
        elif not fuse and key.endswith("/" + _QKV):
            policy = entries.pop(key)
            prefix = key[:-len("query_key_value")]
            entries.update({f"{prefix}{part}_dense": policy for part in _QKV_PARTS})
    return {**dtype, "config": {**config, "policy_map": entries}}


def is_quantized_config(config):
    """True when a (validated) preset config's dtype maps a layer to a quantized policy."""
    from falcon_tf._keras import keras
    from falcon_tf.model.dtype_policy import resolve_dtype

    if not isinstance(config.get("dtype"), dict):
        return False
    policy = resolve_dtype(config["dtype"])
    return isinstance(policy, keras.dtype_policies.DTypePolicyMap) and any(
        policy[path].quantization_mode is not None for path in policy)


def check_quantized_preset(directory, overrides):
    """A quantized preset keeps its dtype (ValueError otherwise). Returns its
    weights' layout: "keras_hub" (keras-hub's identity: keras-hub's own quantized
    presets, and ours of keras-hub's architecture) or "falcon_tf"."""
    path = os.path.join(directory, CONFIG_FILE)
    if overrides.get("dtype") is not None:
        raise ValueError(f"{path}: the preset is quantized; its dtype is the DTypePolicyMap "
                         f"its weights were saved with, so `dtype` cannot be passed.")
    registered = read_json(path, "Preset file").get("registered_name")
    return "falcon_tf" if registered == FALCON_TF_REGISTERED_NAME else "keras_hub"
