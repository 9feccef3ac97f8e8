"""Presets in keras-hub's format: reading and writing them.

A preset directory holds:
  config.json        {"class_name": "FalconBackbone", "config": {...}, ...}
  metadata.json      versions, parameter count, and (saved by falcon_tf) each file's sha256
  model.weights.h5   Keras 3's weights file, laid out as keras-hub's model saves it
  (tokenizer files: `falcon_tf.text.tokenizer`)

The weights are read with h5py through one declarative map between keras-hub's
dataset paths and this package's variables (`keras_hub_layout`, derived from
`FalconConfig.variable_specs`): every dataset is checked for presence and
shape, and any dataset the map does not know is an error. No code named by a
config is ever imported: `module` and `registered_name` are checked as data.
Quantized presets: `falcon_tf.checkpoints.keras_hub_quantized`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile

import h5py
import numpy as np

from falcon_tf.checkpoints.handles import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE
from falcon_tf.model.config import FAMILY_FIELDS, FalconConfig
from falcon_tf.json_file import read_json
from falcon_tf.untrusted import check_weight

# What config.json may name; keras-hub's identity is written so its loader
# accepts our presets.
def keras_hub_identity(class_name, module):
    """The `module`, `class_name` and `registered_name` fields with which a
    preset's JSON file names keras-hub's Falcon `class_name` (defined in
    keras_hub.src.models.falcon.`module`): keras-hub's loaders look for them;
    ours read the files as data."""
    return {"module": f"keras_hub.src.models.falcon.{module}", "class_name": class_name,
            "registered_name": f"keras_hub>{class_name}"}


KERAS_HUB_BACKBONE = keras_hub_identity("FalconBackbone", "falcon_backbone")
KERAS_HUB_REGISTERED_NAME = KERAS_HUB_BACKBONE["registered_name"]
FALCON_TF_REGISTERED_NAME = "falcon_tf>FalconBackbone"
_REGISTERED_NAMES = (KERAS_HUB_REGISTERED_NAME, FALCON_TF_REGISTERED_NAME, None)
_MODEL_FIELDS = {"name": str, "trainable": bool}


# --------------------------------------------------------------------------
# config.json / metadata.json
# --------------------------------------------------------------------------

def read_config(directory):
    """config.json -> FalconBackbone keyword arguments, fully validated."""
    path = os.path.join(directory, CONFIG_FILE)
    data = read_json(path, "Preset file")
    if not isinstance(data, dict) or data.get("class_name") != "FalconBackbone":
        found = data.get("class_name") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: field `class_name` must be 'FalconBackbone'; found {found!r}.")
    if data.get("registered_name") not in _REGISTERED_NAMES:
        raise ValueError(f"{path}: field `registered_name` is {data.get('registered_name')!r}; "
                         f"expected one of {_REGISTERED_NAMES}.")
    config = data.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: field `config` must be an object.")
    known = set(FalconConfig.field_names()) | set(_MODEL_FIELDS) | {"dtype"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join('config.' + k for k in unknown)}; "
                         f"a FalconBackbone config has {', '.join(sorted(known))}.")
    for field, kind in _MODEL_FIELDS.items():
        if field in config and not isinstance(config[field], kind):
            raise ValueError(f"{path}: field `config.{field}` must be {kind.__name__}; "
                             f"found {config[field]!r}.")
    required = [f.name for f in dataclasses.fields(FalconConfig) if f.default is dataclasses.MISSING]
    absent = [k for k in required if k not in config]
    if absent:
        raise ValueError(f"{path}: required field(s) {', '.join('config.' + k for k in absent)} missing.")
    try:
        FalconConfig(**{k: config[k] for k in FalconConfig.field_names() if k in config})
    except ValueError as err:  # names the field, e.g. `hidden_dim`
        raise ValueError(f"{path}: invalid config: {err}") from None
    if "dtype" in config:
        from falcon_tf.model.dtype_policy import resolve_dtype

        try:
            resolve_dtype(config["dtype"])
        except ValueError as err:
            raise ValueError(f"{path}: field `config.dtype`: {err}") from None
    return dict(config)


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)
        f.write("\n")


# Weights: keras-hub's model.weights.h5 <-> our variables
# --------------------------------------------------------------------------

def _block_group(i):
    # Keras names a container's children by snake-cased class name, then _1, _2 ...
    return "layers/falcon_transformer_decoder" + (f"_{i}" if i else "")


_QKV = "attention/query_key_value"
_QKV_PARTS = ("query", "key", "value")


def keras_hub_groups(config: FalconConfig):
    """Our layer path -> keras-hub's weights-file group(s) for it: one, or for
    our fused q/k/v projection three (keras-hub's query, key and value layers)."""
    groups = {"token_embedding": ["layers/reversible_embedding"],
              "final_layernorm": ["layers/layer_normalization"]}
    for i in range(config.num_layers):
        block, ours = _block_group(i), f"transformer_layer_{i}"
        for norm in config.layer_norm_names:
            groups[f"{ours}/{norm}"] = [f"{block}/{norm}"]
        groups[f"{ours}/attention/output_dense"] = [f"{block}/attention_layer/output_dense"]
        for dense in ("dense_h_to_4h", "dense_4h_to_h"):
            groups[f"{ours}/{dense}"] = [f"{block}/{dense}"]
        groups[f"{ours}/{_QKV}"] = [f"{block}/attention_layer/{part}_dense"
                                    for part in _QKV_PARTS]
    return groups


def keras_hub_layout(config: FalconConfig):
    """keras-hub dataset path -> (shape, our variable name, q/k/v slot or None).

    Slot 0/1/2 marks the query/key/value part of our fused projection. For the
    family members keras-hub lacks, the same scheme extends: key/value kernels
    are (hidden, kv_heads, head_dim), biases are absent with use_bias=False, and
    each block's LayerNorms keep their own names (ln_attn, ln_mlp).
    """
    h, d = config.hidden_dim, config.head_dim
    heads = (config.num_attention_heads, config.kv_heads, config.kv_heads)  # q, k, v
    by_layer = {}  # our layer path -> [(variable, shape)], in the model's order
    for name, shape in config.variable_specs().items():
        layer, variable = name.rsplit("/", 1)
        by_layer.setdefault(layer, []).append((variable, shape))
    layout = {}
    for layer, groups in keras_hub_groups(config).items():
        if layer.endswith(_QKV):  # our fused kernel (h, (q + 2 kv) * d), one part per group
            variables = [[("kernel", (h, count, d))]
                         + ([("bias", (count, d))] if config.use_bias else [])
                         for count in heads]
        else:
            variables = [by_layer[layer]]
        for slot, (group, group_vars) in enumerate(zip(groups, variables)):
            for index, (name, shape) in enumerate(group_vars):
                layout[f"{group}/vars/{index}"] = (shape, f"{layer}/{name}",
                                                   slot if len(groups) > 1 else None)
    return layout


def named_variables(model):
    """Our canonical variable names -> keras Variables of a FalconBackbone."""
    def layer_vars(prefix, layer, names):
        return {f"{prefix}/{name}": var for name, var in zip(names, layer.weights)}

    out = {"token_embedding/embeddings": model.token_embedding.embeddings}
    for i, block in enumerate(model.transformer_layers):
        p = f"transformer_layer_{i}"
        for norm in block.layer_norm_names:
            out.update(layer_vars(f"{p}/{norm}", getattr(block, norm), ("gamma", "beta")))
        for path, layer in (("attention/query_key_value", block.attention.query_key_value),
                            ("attention/output_dense", block.attention.output_dense),
                            ("dense_h_to_4h", block.dense_h_to_4h),
                            ("dense_4h_to_h", block.dense_4h_to_h)):
            out.update(layer_vars(f"{p}/{path}", layer, ("kernel", "bias")))
    out.update(layer_vars("final_layernorm", model.final_layernorm, ("gamma", "beta")))
    return out


def _open_weights(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Preset file missing: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 weights file: {err}") from None


def _datasets(f, path):
    """{name: h5py.Dataset} of every dataset, refusing whatever could read data
    from outside the file: soft and external links, virtual datasets and
    external storage."""
    found, refused = {}, []

    def visit(name):  # an exception raised here would escape h5py's lock; collect instead
        link = f.get(name, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            refused.append(f"{name} is an HDF5 {type(link).__name__}")
            return None
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                refused.append(f"dataset {name} is a virtual dataset")
            elif obj.external:
                refused.append(f"dataset {name} is stored in external files")
            else:
                found[name] = obj
        return None

    try:
        f.visit_links(visit)
    except (OSError, RuntimeError, KeyError) as err:
        raise ValueError(f"{path} is not a readable HDF5 weights file: {err}") from None
    if refused:
        raise ValueError(f"{path}: {refused[0]}; a weights file must hold its data itself.")
    return found


def _write_dataset(f, name, array):
    """`array` as dataset `name` of the open file `f`, in its own dtype;
    bfloat16 marked the way Keras marks it."""
    array = np.asarray(array)
    dataset = f.create_dataset(name, data=array)
    if array.dtype.name == "bfloat16":
        dataset.attrs["dtype"] = "bfloat16"


def _is_bfloat16(dataset):
    return dataset.attrs.get("dtype") == "bfloat16"  # how Keras marks bfloat16 data


def inspect_weights(path, config: FalconConfig):
    """Checks model.weights.h5 against `config` without reading any weight: every
    dataset's name, shape, dtype and storage, so that a config's sizes are bounded
    by the file before any variable is built. Returns the open file and its
    datasets, (f, {dataset path: h5py.Dataset})."""
    f = _open_weights(path)
    try:
        found = _datasets(f, path)
        if config.num_layers > len(found):  # refused before a layout of that size is built
            raise ValueError(f"{path} holds {len(found)} datasets; the preset's config.json "
                             f"asks for num_layers {config.num_layers}.")
        layout = keras_hub_layout(config)
        unused = sorted(set(found) - set(layout))
        if unused:
            raise ValueError(f"{path}: dataset(s) not part of a FalconBackbone with this "
                             f"config: {', '.join(unused[:5])}" + (" ..." if len(unused) > 5 else ""))
        for h5_path, (shape, ours, _) in layout.items():
            if h5_path not in found:
                raise ValueError(f"{path}: dataset {h5_path} is missing (needed for {ours}).")
            dataset = found[h5_path]
            if tuple(dataset.shape) != shape:
                raise ValueError(f"{path}: dataset {h5_path} has shape {tuple(dataset.shape)}; "
                                 f"the config needs {shape}.")
            floating = dataset.dtype.itemsize == 2 if _is_bfloat16(dataset) else (
                dataset.dtype.kind == "f")
            if not floating:
                raise ValueError(f"{path}: dataset {h5_path} has dtype {dataset.dtype}; weights "
                                 f"must be float16, bfloat16, float32 or float64.")
    except BaseException:
        f.close()
        raise
    return f, found


def iter_weights(path, config: FalconConfig, inspected=None):
    """model.weights.h5 (keras-hub layout) -> (our name, array in the stored dtype)
    pairs, one variable at a time, so that loading holds one tensor beyond the
    model's own variables.

    Every dataset is checked first (`inspect_weights`, or its result
    `inspected`, whose file this closes); each value must be finite.
    """
    f, found = inspected or inspect_weights(path, config)
    with f:
        fused = {}
        for h5_path, (shape, ours, slot) in keras_hub_layout(config).items():
            dataset = found[h5_path]
            try:
                array = dataset[()]
                if _is_bfloat16(dataset):
                    import ml_dtypes

                    array = np.asarray(array).view(ml_dtypes.bfloat16)
                array = np.asarray(array)  # kept in its stored dtype; cast on assignment
            except (OSError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: dataset {h5_path} cannot be read: {err}") from None
            check_weight(array, path, f"dataset {h5_path}")
            if slot is None:
                yield ours, array
                continue
            # q, k and v are separate datasets: (h, n, d) -> (h, n*d); (n, d) -> (n*d,)
            flat = array.reshape(shape[0], -1) if len(shape) == 3 else array.reshape(-1)
            parts = fused.setdefault(ours, [None] * 3)
            parts[slot] = flat
            if all(part is not None for part in parts):
                yield ours, np.concatenate(fused.pop(ours), axis=-1)


def write_weights(path, named_arrays, config: FalconConfig):
    """Streams (our name, array) pairs into model.weights.h5 in keras-hub's layout.

    Arrays keep their dtype (bfloat16 marked the way Keras marks it); every
    variable of the config must come exactly once.
    """
    widths = np.array([config.num_attention_heads, config.kv_heads, config.kv_heads]) \
        * config.head_dim
    starts = np.concatenate([[0], np.cumsum(widths)])
    targets = {}  # our name -> [(h5 path, shape, slot)]
    for h5_path, (shape, ours, slot) in keras_hub_layout(config).items():
        targets.setdefault(ours, []).append((h5_path, shape, slot))
    written = set()
    with h5py.File(path, "w") as f:
        for ours, array in named_arrays:
            if ours not in targets or ours in written:
                raise ValueError(f"{path}: unexpected or repeated weight {ours}.")
            written.add(ours)
            for h5_path, shape, slot in targets[ours]:
                part = array if slot is None else array[..., starts[slot]:starts[slot + 1]]
                _write_dataset(f, h5_path, np.asarray(part).reshape(shape))
    missing = sorted(set(targets) - written)
    if missing:
        raise ValueError(f"{path}: no value for weight(s) {', '.join(missing[:5])}.")


def assign_weights(model, named_arrays, source):
    """Sets every variable of `model` from (name, array) pairs, checking names and shapes."""
    from falcon_tf._keras import keras

    variables = named_variables(model)
    done = set()
    for name, array in named_arrays:
        if name not in variables or name in done:
            raise ValueError(f"{source}: unexpected or repeated weight {name}.")
        var = variables[name]
        if tuple(array.shape) != tuple(var.shape):
            raise ValueError(f"{source}: weight {name} has shape {tuple(array.shape)}; "
                             f"the model needs {tuple(var.shape)}.")
        var.assign(keras.ops.cast(array, var.dtype))  # TensorFlow's cast: fast for bfloat16
        done.add(name)
    missing = sorted(set(variables) - done)
    if missing:
        raise ValueError(f"{source}: no value for weight(s) {', '.join(missing[:5])}.")


def random_weights(model, seed):
    """Deterministic random weights for every variable, drawn in name order."""
    rng = np.random.default_rng(seed)
    for name, var in sorted(named_variables(model).items()):
        shape = tuple(var.shape)
        if name.endswith("/gamma"):
            yield name, 1.0 + 0.1 * rng.standard_normal(shape, dtype="float32")
        else:
            yield name, 0.02 * rng.standard_normal(shape, dtype="float32")


# --------------------------------------------------------------------------
# Writing a preset
# --------------------------------------------------------------------------

CHECKSUMS_FIELD = "falcon_tf_checksums"  # in metadata.json: file -> {sha256, bytes}


def verify_preset_files(directory, skip=()):
    """Checks the files a preset saved by falcon_tf lists in metadata.json
    against their recorded sha256 and size (presets saved elsewhere list none).
    A listed file that is absent, or named in `skip`, is left to the reader that
    needs it."""
    from falcon_tf.artifacts import manifest
    from falcon_tf.json_file import json_or_none

    where = os.path.join(directory, METADATA_FILE)
    metadata = json_or_none(where)
    listed = metadata.get(CHECKSUMS_FIELD) if isinstance(metadata, dict) else None
    if listed is None:
        return
    if not isinstance(listed, dict):
        raise ValueError(f"{where}: field `{CHECKSUMS_FIELD}` must be an object.")
    manifest.verify(directory, {k: v for k, v in listed.items() if k not in skip}, where=where,
                    missing_ok=True, hint="recorded when the preset was saved; the file was "
                                          "changed or damaged.")


def preset_config_json(config_dict, falcon_config, keras_hub_layout=True):
    """The config.json document: keras-hub's identity whenever keras-hub can load it."""
    if falcon_config.is_keras_hub_architecture and keras_hub_layout:
        identity = KERAS_HUB_BACKBONE
        config_dict = {k: v for k, v in config_dict.items() if k not in FAMILY_FIELDS}
    else:
        identity = {"module": "falcon_tf.model.backbone", "class_name": "FalconBackbone",
                    "registered_name": FALCON_TF_REGISTERED_NAME}
    return {"module": identity["module"], "class_name": identity["class_name"],
            "config": config_dict, "registered_name": identity["registered_name"]}


def write_preset(preset_dir, config_dict, falcon_config, named_arrays, extra_files=None,
                 metadata=None, weights_writer=None, keras_hub_layout=True):
    """Writes a preset atomically: into a temporary sibling, then renamed in.

    `extra_files` maps a relative path inside the preset to a source file to copy;
    `metadata` adds fields to metadata.json. `weights_writer(path)`, when given,
    writes model.weights.h5 instead of `named_arrays` (float, keras-hub's
    layout); `keras_hub_layout` says whether what it writes is keras-hub's layout.
    """
    from importlib.metadata import version

    from falcon_tf import __version__

    preset_dir = os.path.abspath(os.fspath(preset_dir))
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise ValueError(f"`preset_dir` {preset_dir} exists and is not a directory.")
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(preset_dir)}.tmp-", dir=parent)
    try:
        _write_json(os.path.join(tmp, CONFIG_FILE), preset_config_json(
            config_dict, falcon_config, keras_hub_layout=keras_hub_layout))
        if weights_writer is None:
            write_weights(os.path.join(tmp, WEIGHTS_FILE), named_arrays, falcon_config)
        else:
            weights_writer(os.path.join(tmp, WEIGHTS_FILE))
        names = [WEIGHTS_FILE]
        for relative, source in (extra_files or {}).items():
            os.makedirs(os.path.dirname(os.path.join(tmp, relative)), exist_ok=True)
            shutil.copyfile(source, os.path.join(tmp, relative))
            names.append(relative)
        from falcon_tf.artifacts import manifest

        # Written last, over what it describes: a damaged or mixed preset is refused.
        _write_json(os.path.join(tmp, METADATA_FILE), {
            "keras_version": version("keras"),
            "falcon_tf_version": __version__,
            "parameter_count": falcon_config.parameter_count(),
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
            "tasks": [],
            **(metadata or {}),
            CHECKSUMS_FIELD: {name: {"sha256": manifest.sha256(os.path.join(tmp, name)),
                                     "bytes": os.path.getsize(os.path.join(tmp, name))}
                              for name in [CONFIG_FILE] + names},
        })
        names.insert(0, METADATA_FILE)
        if not os.path.exists(preset_dir):
            os.rename(tmp, preset_dir)
            return preset_dir
        for name in names + [CONFIG_FILE]:  # config last: it names the rest
            os.makedirs(os.path.dirname(os.path.join(preset_dir, name)), exist_ok=True)
            os.replace(os.path.join(tmp, name), os.path.join(preset_dir, name))
        return preset_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
