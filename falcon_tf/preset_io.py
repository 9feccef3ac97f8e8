"""Reading and writing presets in keras-hub's format.

A preset directory holds:
  config.json        {"class_name": "FalconBackbone", "config": {...}, ...}
  metadata.json      versions and parameter count
  model.weights.h5   Keras 3's weights file, laid out as keras-hub's model saves it
  (tokenizer files, untouched here)

The weights are read with h5py through one declarative map between keras-hub's
dataset paths and this package's variables: every dataset is checked for
presence and shape, and any dataset the map does not know is an error. A
model quantized with Keras's `quantize` keeps its DTypePolicyMap in
config.json; its weights are keras-hub's layout for keras-hub's architecture
(each layer's variables in Keras's saving order, our fused q/k/v split into
keras-hub's three layers), and for the other family members falcon_tf's own
(datasets named by Keras variable path), both checked just as strictly. No
code named by a config is ever imported: `module` and `registered_name` are
checked as data. Hugging Face checkpoint directories and hf:// handles are
recognised here and read through `falcon_tf.huggingface`.
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

from falcon_tf import huggingface
from falcon_tf import presets as _presets
from falcon_tf.config import FAMILY_FIELDS, FalconConfig
from falcon_tf.json_file import read_json
from falcon_tf.untrusted import check_weight

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
# Where builtin presets with real weights ship inside the package.
EMBEDDED_FOLDER = "preset_files"

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
# Handles
# --------------------------------------------------------------------------

def artifact_name(preset):
    """A short name for a preset argument: builtin name, directory, or handle
    ("kaggle://keras/falcon/keras/falcon_refinedweb_1b_en/2" -> "falcon_refinedweb_1b_en",
    "hf://tiiuae/falcon-7b@main" -> "falcon-7b")."""
    path = str(os.fspath(preset)).split("://", 1)[-1].split("@", 1)[0]
    parts = [p for p in path.split("/") if p and not p.isdigit()]
    return parts[-1] if parts else "preset"


def _local_dir_hint(preset):
    name = artifact_name(preset)
    return (f"To load a preset you already have on disk, pass its local directory "
            f"(holding {CONFIG_FILE} and {WEIGHTS_FILE}), e.g. "
            f"FalconBackbone.from_preset('/path/to/{name}').")


def download_kaggle(handle):
    """`kaggle://owner/model/framework/variation[/version]` -> local directory."""
    path = handle[len("kaggle://"):].strip("/")
    if len(path.split("/")) not in (4, 5) or "" in path.split("/"):
        raise ValueError(
            f"Invalid Kaggle handle {handle!r}: expected "
            f"kaggle://owner/model/framework/variation[/version]. {_local_dir_hint(handle)}")
    try:
        import kagglehub

        return kagglehub.model_download(path)
    except Exception as err:  # network, auth, unknown model: all end the same way
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"Could not download preset {handle!r} with kagglehub ({type(err).__name__}: "
            f"{reason}). {_local_dir_hint(handle)}") from None


def embedded_dir(entry):
    """The package directory holding a builtin preset shipped with the package."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), EMBEDDED_FOLDER,
                        entry["embedded_dir"])
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise FileNotFoundError(f"The embedded preset's files are missing: {path} (reinstall "
                                f"falcon-tf; `pip install -e .` keeps them in place).")
    return path


def resolve(preset):
    """A preset argument -> ("random", builtin entry), ("dir", keras-hub-format
    directory, an embedded preset's included) or ("hf", Hugging Face checkpoint
    directory)."""
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(f"`preset` must be a string or path; received {preset!r}.")
    preset = os.fspath(preset)
    if preset in _presets.BACKBONE_PRESETS:
        entry = _presets.BACKBONE_PRESETS[preset]
        if "random_seed" in entry:
            return "random", entry
        if "embedded_dir" in entry:
            return "dir", embedded_dir(entry)
        preset = entry.get("kaggle_handle") or entry["hf_handle"]
    if preset.startswith("kaggle://"):
        preset = download_kaggle(preset)
    elif preset.startswith("hf://"):
        preset = huggingface.download(preset)
    if os.path.isdir(preset):
        return ("hf" if huggingface.is_hf_directory(preset) else "dir"), preset
    if os.path.exists(preset):
        raise ValueError(f"Preset {preset!r} is a file; pass the directory that holds "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE}.")
    raise ValueError(
        f"Unknown preset {preset!r}: not a builtin preset "
        f"({', '.join(sorted(_presets.BACKBONE_PRESETS))}), a kaggle:// or hf:// handle, or an "
        f"existing directory. {_local_dir_hint(preset)}")


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
        from falcon_tf.backbone import resolve_dtype

        try:
            resolve_dtype(config["dtype"])
        except ValueError as err:
            raise ValueError(f"{path}: field `config.dtype`: {err}") from None
    return dict(config)


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)
        f.write("\n")


# --------------------------------------------------------------------------
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
    from falcon_tf.backbone import _own_policy

    fused = len(_saved(layer))
    templates = []
    for count in (config.num_attention_heads, config.kv_heads, config.kv_heads):
        template = keras.layers.EinsumDense(
            "bqm,muh->bquh", output_shape=(None, count, config.head_dim),
            bias_axes="uh" if config.use_bias else None, dtype=_own_policy(layer))
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


def _quantized_config(config):
    """True when a (validated) preset config's dtype maps a layer to a quantized policy."""
    from falcon_tf._keras import keras
    from falcon_tf.backbone import resolve_dtype

    if not isinstance(config.get("dtype"), dict):
        return False
    policy = resolve_dtype(config["dtype"])
    return isinstance(policy, keras.dtype_policies.DTypePolicyMap) and any(
        policy[path].quantization_mode is not None for path in policy)


# --------------------------------------------------------------------------
# Entry points: FalconBackbone.from_preset / save_to_preset, and the converter
# --------------------------------------------------------------------------

CHECKSUMS_FIELD = "falcon_tf_checksums"  # in metadata.json: file -> {sha256, bytes}


def verify_preset_files(directory, skip=()):
    """Checks the files a preset saved by falcon_tf lists in metadata.json
    against their recorded sha256 and size (presets saved elsewhere list none).
    A listed file that is absent, or named in `skip`, is left to the reader that
    needs it."""
    from falcon_tf import manifest
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


def untied_head_reason(kind, found):
    """Why the checkpoint `resolve` found has an LM head other than its token
    embedding (a Hugging Face config saying so, or a converted preset's
    metadata.json recording it), or None."""
    if kind == "hf":
        return huggingface.untied_head_reason(found)
    if kind == "dir":
        from falcon_tf.json_file import json_or_none

        path = os.path.join(found, METADATA_FILE)
        metadata = json_or_none(path)
        if isinstance(metadata, dict) and metadata.get("lm_head"):
            return f"{path}: `lm_head` is {metadata['lm_head']!r}"
    return None


def load_backbone(cls, preset, load_weights=True, **overrides):
    builtin = _presets.BACKBONE_PRESETS.get(preset) if isinstance(preset, str) else None
    if builtin is not None and not load_weights:
        # A builtin preset's config is known: fresh weights need no download.
        return cls(**{**builtin["config"], "dtype": None, **overrides})
    kind, found = resolve(preset)
    if kind == "random":
        config = dict(found["config"])
    elif kind == "hf":
        config, layout = huggingface.read_hf_config(found)
    inspected = None
    quantized = False
    if kind == "dir":
        verify_preset_files(found, skip=() if load_weights else (WEIGHTS_FILE,))
        config = read_config(found)
        quantized = _quantized_config(config)
        if quantized:
            quantized = check_quantized_preset(found, overrides)
            if quantized == "keras_hub":  # keras-hub's q/k/v entries -> our fused one
                try:
                    config["dtype"] = keras_hub_policy_map(config["dtype"], fuse=True)
                except ValueError as err:
                    raise ValueError(f"{os.path.join(found, CONFIG_FILE)}: field "
                                     f"`config.dtype`: {err}") from None
        elif load_weights:  # the weights file must fit the config before anything is built
            fields = {k: config[k] for k in FalconConfig.field_names() if k in config}
            overridden = {k: v for k, v in overrides.items() if k in fields}
            inspected = inspect_weights(os.path.join(found, WEIGHTS_FILE),
                                        FalconConfig(**{**fields, **overridden}))
    # As keras-hub does: a saved float dtype is not restored; the model takes
    # Keras's current default policy unless the caller passes `dtype`. A
    # quantized preset keeps the policies its weights were saved with.
    if not quantized:
        config["dtype"] = None
    config.update(overrides)
    try:
        model = cls(**config)
    except BaseException:
        if inspected is not None:
            inspected[0].close()
        raise
    # A checkpoint fact that travels with the model: FalconCausalLM (and so every
    # causal-LM export) refuses to tie a head the checkpoint did not tie.
    model.untied_lm_head = untied_head_reason(kind, found)
    if not load_weights:
        return model
    if kind == "random":
        assign_weights(model, random_weights(model, found["random_seed"]), f"preset {preset!r}")
    elif kind == "hf":
        with progress_bar(f"Loading {os.path.basename(os.path.normpath(found))}") as progress:
            weights = huggingface.iter_weights(found, model.falcon_config, layout, progress)
            assign_weights(model, weights, found)
    elif quantized == "keras_hub":
        load_keras_hub_quantized(model, os.path.join(found, WEIGHTS_FILE))
    elif quantized:
        load_quantized_weights(model, os.path.join(found, WEIGHTS_FILE))
    else:
        path = os.path.join(found, WEIGHTS_FILE)
        assign_weights(model, iter_weights(path, model.falcon_config, inspected), path)
    return model


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


def preset_config_json(config_dict, falcon_config, keras_hub_layout=True):
    """The config.json document: keras-hub's identity whenever keras-hub can load it."""
    if falcon_config.is_keras_hub_architecture and keras_hub_layout:
        identity = KERAS_HUB_BACKBONE
        config_dict = {k: v for k, v in config_dict.items() if k not in FAMILY_FIELDS}
    else:
        identity = {"module": "falcon_tf.backbone", "class_name": "FalconBackbone",
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
        from falcon_tf import manifest

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


def save_backbone(model, preset_dir):
    metadata = ({"lm_head": huggingface.UNTIED_HEAD_NOTE}
                if getattr(model, "untied_lm_head", None) else {})
    if model.quantization_modes:
        # keras-hub's layout wherever keras-hub has the architecture, so that its
        # from_preset loads the quantized model too; falcon_tf's own otherwise.
        metadata["quantization"] = model.quantization_modes
        config = model.get_config()
        if model.falcon_config.is_keras_hub_architecture:
            config["dtype"] = keras_hub_policy_map(config["dtype"], fuse=False)
            writer = write_keras_hub_quantized
        else:
            writer = write_quantized_weights
        return write_preset(preset_dir, config, model.falcon_config, None, metadata=metadata,
                            weights_writer=lambda path: writer(path, model),
                            keras_hub_layout=writer is write_keras_hub_quantized)
    weights = ((name, var.numpy()) for name, var in named_variables(model).items())
    return write_preset(preset_dir, model.get_config(), model.falcon_config, weights,
                        metadata=metadata or None)


class progress_bar:
    """A tqdm bar (over tensors, or `unit`), silent when stderr is not a terminal."""

    def __init__(self, description, unit="tensor"):
        self.description = description
        self.unit = unit
        self.bar = None

    def __enter__(self):
        return self

    def __call__(self, done, total):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.description, unit=self.unit, disable=None)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
