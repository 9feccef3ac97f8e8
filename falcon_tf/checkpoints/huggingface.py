"""Hugging Face Falcon checkpoints: config translation and a streaming weight reader.

A checkpoint directory holds config.json (`model_type` "falcon", or the older
"RefinedWebModel" / "RefinedWeb") and its weights as model.safetensors, sharded
safetensors with model.safetensors.index.json, or pytorch_model.bin (sharded
or not). Pickled .bin files are read only through torch's weights-only
unpickler, which refuses anything but tensors: no code in a checkpoint runs.

Weights stream one tensor at a time, so reading never holds much more than
the largest tensor beside what the caller keeps.
"""

from __future__ import annotations

import json
import os

import numpy as np

from falcon_tf.json_file import json_or_none, read_json
from falcon_tf.untrusted import check_weight, path_inside

HF_CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")

# model_type -> whether it implies the new decoder architecture (None: read the flag).
MODEL_TYPES = {"falcon": None, "RefinedWebModel": False, "RefinedWeb": True}
# Older configs spell some fields differently.
_OLD_NAMES = {"n_embed": "hidden_size", "n_layer": "num_hidden_layers",
              "n_head": "num_attention_heads", "n_head_kv": "num_kv_heads"}
# Tensors a checkpoint may hold that the backbone does not use.
_IGNORED_SUFFIXES = ("lm_head.weight", "rotary_emb.inv_freq")


def is_hf_directory(directory):
    """True if `directory` looks like a Hugging Face checkpoint (not a keras-hub preset)."""
    path = os.path.join(directory, HF_CONFIG_FILE)
    data = json_or_none(path)
    return isinstance(data, dict) and "model_type" in data and "class_name" not in data


def read_hf_config(directory):
    """config.json -> (FalconBackbone kwargs, qkv layout name). Errors name file and field."""
    path = os.path.join(directory, HF_CONFIG_FILE)
    hf = read_json(path, "Checkpoint file")
    if not isinstance(hf, dict):
        raise ValueError(f"{path}: expected a JSON object.")
    hf = {_OLD_NAMES.get(k, k): v for k, v in hf.items()}
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path}: field `model_type` is {model_type!r}; a Falcon checkpoint has "
                         f"one of {', '.join(repr(t) for t in MODEL_TYPES)}.")

    def unsupported(field, value, why):
        raise ValueError(f"{path}: field `{field}` = {value!r} is not supported: {why}.")

    activation = hf.get("activation", "gelu")
    if activation != "gelu":
        unsupported("activation", activation, "Falcon's MLP uses exact GELU")
    for field in ("rope_scaling",):
        if hf.get(field):
            unsupported(field, hf[field], "only plain rotary embeddings are implemented")
    rope = hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        unsupported("rope_parameters", rope, "expected an object")
    if rope.get("rope_type", "default") != "default":
        unsupported("rope_parameters.rope_type", rope["rope_type"],
                    "only plain rotary embeddings are implemented")
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if field not in hf:
            raise ValueError(f"{path}: required field `{field}` missing.")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hidden // heads if isinstance(heads, int) and heads else None):
        unsupported("head_dim", hf["head_dim"], "it must equal hidden_size / num_attention_heads")

    implied = MODEL_TYPES[model_type]
    new_arch = bool(hf.get("new_decoder_architecture", False)) if implied is None else implied
    multi_query = bool(hf.get("multi_query", True))
    if new_arch:
        kv_heads = hf.get("num_kv_heads") or heads
        layout = "grouped"
    elif multi_query:
        kv_heads, layout = 1, "multi_query"
    else:
        kv_heads, layout = None, "interleaved"
    parallel = new_arch or bool(hf.get("parallel_attn", True))
    norms = hf.get("num_ln_in_parallel_attn") or (2 if new_arch else 1)
    if norms not in (1, 2):
        unsupported("num_ln_in_parallel_attn", norms, "Falcon blocks have 1 or 2")
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    kwargs = dict(
        vocabulary_size=hf["vocab_size"],
        num_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=hf.get("ffn_hidden_size") or 4 * hidden,
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        attention_dropout_rate=hf.get("attention_dropout", 0.0) or 0.0,
        feedforward_dropout_rate=hf.get("hidden_dropout", 0.0) or 0.0,
        num_kv_heads=None if kv_heads in (None, heads) else kv_heads,
        position_embedding="alibi" if hf.get("alibi", False) else "rotary",
        rope_theta=rope_theta,
        parallel_attention=parallel,
        separate_mlp_layer_norm=bool(new_arch and norms == 2),
        use_bias=bool(hf.get("bias", False)),
    )
    from falcon_tf.model.config import FalconConfig

    try:
        FalconConfig(**kwargs)
    except ValueError as err:
        raise ValueError(f"{path}: config not usable: {err}") from None
    if layout == "interleaved" and kwargs["num_kv_heads"] is not None:
        raise ValueError(f"{path}: field `num_kv_heads` needs `new_decoder_architecture`.")
    return kwargs, layout


# Written into metadata.json of a preset converted from a checkpoint whose LM head
# is not the embedding: the preset holds the backbone only.
UNTIED_HEAD_NOTE = "untied in the checkpoint (tie_word_embeddings: false); not converted"


def has_untied_head(directory):
    hf = read_json(os.path.join(directory, HF_CONFIG_FILE), "Checkpoint file")
    return isinstance(hf, dict) and hf.get("tie_word_embeddings", True) is False


def untied_head_reason(directory):
    """Why this checkpoint's LM head is not its token embedding, or None."""
    if has_untied_head(directory):
        return (f"{os.path.join(directory, HF_CONFIG_FILE)}: field `tie_word_embeddings` is "
                f"false: this checkpoint has its own lm_head")
    return None


def _qkv_to_ours(array, config, layout):
    """HF fused rows -> our [q | k | v] rows. `array`: (rows, hidden) weight or (rows,) bias."""
    n, kv, d = config.num_attention_heads, config.kv_heads, config.head_dim
    tail = array.shape[1:]
    if layout == "interleaved":  # rows (heads, 3, head_dim)
        parts = array.reshape((n, 3, d) + tail)
        q, k, v = parts[:, 0], parts[:, 1], parts[:, 2]
    elif layout == "multi_query":  # rows (heads + 2, head_dim): all q, then k, then v
        parts = array.reshape((n + 2, d) + tail)
        q, k, v = parts[:n], parts[n:n + 1], parts[n + 1:]
    else:  # grouped: rows (kv_heads, group + 2, head_dim): each group's q, then its k, v
        g = n // kv
        parts = array.reshape((kv, g + 2, d) + tail)
        q, k, v = parts[:, :g], parts[:, g], parts[:, g + 1]
    return np.concatenate([x.reshape((-1,) + tail) for x in (q, k, v)], axis=0)


def tensor_map(config):
    """HF tensor name (no "transformer." prefix) -> (our variable name, kind).

    kind: "linear" (transpose a torch Linear weight), "qkv_weight", "qkv_bias", "copy".
    """
    names = {"word_embeddings.weight": ("token_embedding/embeddings", "copy"),
             "ln_f.weight": ("final_layernorm/gamma", "copy"),
             "ln_f.bias": ("final_layernorm/beta", "copy")}
    for i in range(config.num_layers):
        hf, ours = f"h.{i}.", f"transformer_layer_{i}/"
        for norm in config.layer_norm_names:
            names[f"{hf}{norm}.weight"] = (f"{ours}{norm}/gamma", "copy")
            names[f"{hf}{norm}.bias"] = (f"{ours}{norm}/beta", "copy")
        names[f"{hf}self_attention.query_key_value.weight"] = (
            f"{ours}attention/query_key_value/kernel", "qkv_weight")
        linears = {"self_attention.dense": "attention/output_dense",
                   "mlp.dense_h_to_4h": "dense_h_to_4h", "mlp.dense_4h_to_h": "dense_4h_to_h"}
        for theirs, mine in linears.items():
            names[f"{hf}{theirs}.weight"] = (f"{ours}{mine}/kernel", "linear")
        if config.use_bias:
            names[f"{hf}self_attention.query_key_value.bias"] = (
                f"{ours}attention/query_key_value/bias", "qkv_bias")
            for theirs, mine in linears.items():
                names[f"{hf}{theirs}.bias"] = (f"{ours}{mine}/bias", "copy")
    return names


def _weight_files(directory):
    """-> (format, {tensor name: file}) with every shard checked to exist."""
    for index_name, fmt in ((SAFETENSORS_INDEX, "safetensors"), (TORCH_INDEX, "torch")):
        index_path = os.path.join(directory, index_name)
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                assert isinstance(weight_map, dict)
            except (ValueError, KeyError, TypeError, AssertionError):
                raise ValueError(f"{index_path}: expected a JSON object with a `weight_map` "
                                 f"object.") from None
            files = {}
            for name, shard in weight_map.items():
                if not isinstance(shard, str):
                    raise ValueError(f"{index_path}: `weight_map.{name}` must be a file name; "
                                     f"found {shard!r}.")
                files[name] = path_inside(directory, shard, index_path)
            for shard in sorted(set(files.values())):
                if not os.path.isfile(shard):
                    raise FileNotFoundError(f"Checkpoint shard missing: {shard} (listed in "
                                            f"{index_path}).")
            return fmt, files
    for name, fmt in ((SAFETENSORS_FILE, "safetensors"), (TORCH_FILE, "torch")):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return fmt, {None: path_inside(directory, name, directory)}
    raise FileNotFoundError(
        f"No weights in {directory}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
        f"{TORCH_FILE} or {TORCH_INDEX}.")


def _iter_file(fmt, path):
    """Yields (name, numpy array) from one weights file, one tensor at a time."""
    if fmt == "safetensors":
        import ml_dtypes  # noqa: F401  registers bfloat16 with numpy for safetensors
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
        return
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} is a PyTorch pickle; reading it safely needs torch "
                         f"(`pip install torch`, CPU build), or convert it to safetensors.") \
            from None
    import pickle

    import zipfile

    try:
        # mmap keeps memory near one tensor; the legacy (non-zip) format cannot be
        # mapped and is read whole, through the same weights-only unpickler.
        state = torch.load(path, map_location="cpu", weights_only=True,
                           mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: refused to load: not a plain tensor checkpoint "
                         f"(torch weights-only unpickler: {reason}). Nothing in it was run.") \
            from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(state).__name__}.")
    for name in list(state):
        tensor = state.pop(name)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is not a tensor.")
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            array = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            array = tensor.numpy()
        yield name, array


def iter_weights(directory, config, layout, progress=None):
    """Streams (our variable name, numpy array in the checkpoint's dtype).

    Every tensor the config needs must be present exactly once with the right
    shape; a tensor the model does not know is an error. `progress` is an
    optional callable given the number of tensors read so far and the total.
    """
    fmt, files = _weight_files(directory)
    expected = tensor_map(config)
    shapes = _expected_shapes(config)
    seen = set()
    by_file = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path in by_file:
        for name, array in _iter_file(fmt, path):
            short = name[len("transformer."):] if name.startswith("transformer.") else name
            if short.endswith(_IGNORED_SUFFIXES):
                continue
            if short not in expected:
                raise ValueError(f"{path}: tensor {name!r} is not part of a Falcon backbone "
                                 f"with this config.json.")
            if short in seen:
                raise ValueError(f"{path}: tensor {name!r} appears twice.")
            ours, kind = expected[short]
            if tuple(array.shape) != shapes[short]:
                raise ValueError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}; "
                                 f"config.json needs {shapes[short]}.")
            check_weight(array, path, repr(name))
            seen.add(short)
            if kind == "linear":
                array = array.T
            elif kind in ("qkv_weight", "qkv_bias"):
                array = _qkv_to_ours(array, config, layout)
                if kind == "qkv_weight":
                    array = array.T
            yield ours, np.ascontiguousarray(array)
            if progress is not None:
                progress(len(seen), len(expected))
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks tensor(s) "
                         f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))


def _expected_shapes(config):
    """HF tensor name -> its shape: ours (`FalconConfig.variable_specs`),
    reversed where a torch Linear's (out, in) weight becomes our kernel."""
    specs = config.variable_specs()
    return {name: specs[ours][::-1] if kind in ("linear", "qkv_weight") else specs[ours]
            for name, (ours, kind) in tensor_map(config).items()}


def download(handle):
    """`hf://org/name[@revision]` -> local snapshot directory (huggingface_hub cache,
    honouring HF_HUB_OFFLINE and the saved token)."""
    repo = handle[len("hf://"):].strip("/")
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or "" in repo.split("/"):
        raise ValueError(f"Invalid Hugging Face handle {handle!r}: expected "
                         f"hf://org/name[@revision].")
    try:
        import huggingface_hub

        patterns = [HF_CONFIG_FILE, "*.safetensors", SAFETENSORS_INDEX, *TOKENIZER_FILES]
        path = huggingface_hub.snapshot_download(repo, revision=revision or None,
                                                 allow_patterns=patterns)
        if not any(f.endswith(".safetensors") for f in os.listdir(path)):
            path = huggingface_hub.snapshot_download(
                repo, revision=revision or None,
                allow_patterns=patterns + [TORCH_FILE, TORCH_INDEX, "pytorch_model-*.bin"])
        return path
    except Exception as err:  # network, auth, unknown repo: all end the same way
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"Could not download {handle!r} with huggingface_hub ({type(err).__name__}: "
            f"{reason}). To load a checkpoint you already have, pass its local directory "
            f"(config.json and *.safetensors), e.g. FalconBackbone.from_preset('/path/to/"
            f"{repo.split('/')[-1]}').") from None
