"""FalconCausalLMPreprocessor: text -> the causal LM's training and generation inputs.

keras-hub's `FalconCausalLMPreprocessor` contract. Calling it on text gives
`(x, y, sample_weight)`: x = {"token_ids", "padding_mask"} of width
`sequence_length`, y the same ids shifted left by one (the next token at every
position), sample_weight the padding mask shifted likewise. Packing puts the
start token first and the end token last (`add_start_token`,
`add_end_token`), truncating the text between them, then pads with
`tokenizer.pad_token_id`.

Python text (a string, a list or numpy array of strings) gives numpy arrays;
string tensors, eager or inside `tf.data.Dataset.map`, give tensors. Both go
through one packing function in TensorFlow ops.
"""

import json
import os

import numpy as np

from falcon_tf._keras import keras, tf
from falcon_tf.json_file import read_json
from falcon_tf.text.tokenizer import FalconTokenizer

PREPROCESSOR_FILE = "preprocessor.json"  # keras-hub's name for it in a preset
# What a preset's preprocessor.json may set; everything else in it is ignored.
_PRESET_FIELDS = {"sequence_length": int, "add_start_token": bool, "add_end_token": bool}
_LAYER_KWARGS = ("name", "trainable", "dtype")
KERAS_HUB_TOKENIZER_FILE = "tokenizer.json"  # keras-hub's tokenizer layer config in a preset


def _check_length(value, name="sequence_length"):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; received {value!r}.")
    return int(value)


def _check_flag(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False; received {value!r}.")
    return value


def pack(rows, length, start_id, end_id, pad_id, add_start, add_end):
    """rows: int32 RaggedTensor (batch, None) -> token_ids (batch, length) int32
    and padding_mask (batch, length) bool.

    Each row becomes [start] + ids + [end] (each marker when asked for), the ids
    cut so that the markers fit, then padded with `pad_id` to `length`.
    """
    batch = rows.nrows()
    room = max(length - int(add_start) - int(add_end), 0)
    rows = rows[:, :room]
    parts = [rows]
    if add_start:
        parts.insert(0, tf.fill([batch, 1], tf.constant(start_id, tf.int32)))
    if add_end:
        parts.append(tf.fill([batch, 1], tf.constant(end_id, tf.int32)))
    rows = tf.concat(parts, axis=1) if len(parts) > 1 else rows
    token_ids = rows.to_tensor(default_value=pad_id, shape=[None, length])
    padding_mask = tf.ones_like(rows, tf.bool).to_tensor(default_value=False,
                                                         shape=[None, length])
    return token_ids, padding_mask


@keras.saving.register_keras_serializable(package="falcon_tf")
class FalconCausalLMPreprocessor(keras.layers.Layer):
    """Tokenizes and packs text for `FalconCausalLM` (keras-hub's API).

    Args:
        tokenizer: a `falcon_tf.FalconTokenizer`.
        sequence_length: width of the packed inputs (and of the labels).
        add_start_token: put the start token (`<|endoftext|>`) first.
        add_end_token: put the end token (`<|endoftext|>`) last (training only;
            `generate_preprocess` never adds it).

    Call with `x` (text) alone: the labels of causal language modelling are
    the next tokens of `x`, so passing `y` or `sample_weight` is an error.

    Example:

    >>> from falcon_tf import FalconCausalLMPreprocessor, FalconTokenizer
    >>> tokenizer = FalconTokenizer.from_preset("falcon_tiny_random")
    >>> preprocessor = FalconCausalLMPreprocessor(tokenizer, sequence_length=8)
    >>> x, y, sample_weight = preprocessor(["the cat sat", "a dog"])
    >>> x["token_ids"].shape, y.shape, sample_weight.shape
    ((2, 8), (2, 8), (2, 8))
    >>> bool((x["token_ids"][:, 1:] == y[:, :-1]).all())  # y: the next token
    True
    >>> prompt = preprocessor.generate_preprocess(["the cat"])
    >>> preprocessor.generate_postprocess(prompt)
    ['the cat']
    """

    def __init__(self, tokenizer, sequence_length=1024, add_start_token=True,
                 add_end_token=True, **kwargs):
        unknown = sorted(set(kwargs) - set(_LAYER_KWARGS))
        if unknown:
            raise ValueError(
                f"FalconCausalLMPreprocessor got unknown argument(s) {', '.join(unknown)}; it "
                f"takes tokenizer, sequence_length, add_start_token, add_end_token, name, "
                f"trainable and dtype.")
        if not isinstance(tokenizer, FalconTokenizer):
            raise ValueError(f"`tokenizer` must be a falcon_tf.FalconTokenizer; received "
                             f"{type(tokenizer).__name__}.")
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.add_start_token = _check_flag(add_start_token, "add_start_token")
        self.add_end_token = _check_flag(add_end_token, "add_end_token")
        self.built = True  # no weights

    @property
    def sequence_length(self):
        """The width of packed inputs; may be changed after construction."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        self._sequence_length = _check_length(value)

    # No weights, and text is not a tensor Keras's layer call could convert:
    # calling the preprocessor is calling `call`.
    def __call__(self, x, y=None, sample_weight=None, sequence_length=None):
        return self.call(x, y=y, sample_weight=sample_weight, sequence_length=sequence_length)

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        """Text -> (x, y, sample_weight); see the class docstring."""
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None:
                raise ValueError(
                    f"FalconCausalLMPreprocessor takes text alone: `{name}` must be None (the "
                    f"labels are the next tokens of `x`, and the weights its padding mask).")
        length = self.sequence_length if sequence_length is None else _check_length(
            sequence_length)
        rows, scalar, eager = self._tokenize(x)
        token_ids, padding_mask = self._pack(rows, length + 1, self.add_start_token,
                                             self.add_end_token)
        features = {"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]}
        labels, weights = token_ids[:, 1:], padding_mask[:, 1:]
        out = (features, labels, weights)
        return self._finish(out, scalar, eager)

    def generate_preprocess(self, x, sequence_length=None):
        """Prompts -> {"token_ids", "padding_mask"} of width `sequence_length`
        (this layer's by default): the start token when `add_start_token`,
        never the end token (generation goes on from the prompt's end)."""
        length = self.sequence_length if sequence_length is None else _check_length(
            sequence_length)
        rows, scalar, eager = self._tokenize(x)
        token_ids, padding_mask = self._pack(rows, length, self.add_start_token, False)
        return self._finish({"token_ids": token_ids, "padding_mask": padding_mask}, scalar, eager)

    def generate_postprocess(self, x):
        """{"token_ids", "padding_mask"} -> text, dropping padding and the
        tokenizer's special tokens. numpy in, Python strings out; tensors in,
        a tf.string tensor out."""
        if not isinstance(x, dict) or not {"token_ids", "padding_mask"} <= set(x):
            raise ValueError("`x` must be a dict with `token_ids` and `padding_mask`.")
        special = self.tokenizer.special_token_ids
        if tf.is_tensor(x["token_ids"]) or tf.is_tensor(x["padding_mask"]):
            ids = tf.convert_to_tensor(x["token_ids"])
            mask = tf.cast(x["padding_mask"], tf.bool)
            keep = mask & tf.reduce_all(ids[..., None] != tf.constant(special, ids.dtype),
                                        axis=-1)
            if ids.shape.rank == 1:
                return self.tokenizer.detokenize(tf.boolean_mask(ids, keep))
            return self.tokenizer.detokenize(tf.ragged.boolean_mask(ids, keep))
        ids, mask = np.asarray(x["token_ids"]), np.asarray(x["padding_mask"]).astype(bool)
        if ids.shape != mask.shape or ids.ndim not in (1, 2):
            raise ValueError(f"`token_ids` and `padding_mask` must share one shape, (seq,) or "
                             f"(batch, seq); received {ids.shape} and {mask.shape}.")
        keep = mask & ~np.isin(ids, special)
        if ids.ndim == 1:
            return self.tokenizer.detokenize(ids[keep].tolist())
        return [self.tokenizer.detokenize(row[k].tolist()) for row, k in zip(ids, keep)]

    # --- the two paths, one packing ---

    def _tokenize(self, x):
        """Text -> (int32 RaggedTensor (batch, None), was one string, Python input)."""
        if tf.is_tensor(x):
            if x.dtype != tf.string or x.shape.rank not in (0, 1):
                raise ValueError(f"`x` must be a string or a 1-D batch of strings; received a "
                                 f"{x.dtype.name} tensor of shape {x.shape}.")
            ids = self.tokenizer.tokenize(x)
            if x.shape.rank == 0:
                return tf.RaggedTensor.from_row_lengths(ids, tf.shape(ids, tf.int64)), True, False
            return ids, False, False
        if isinstance(x, np.ndarray) and x.dtype.kind in "USO" and x.ndim <= 1:
            x = x.tolist()
        scalar = isinstance(x, (str, bytes))
        texts = [x] if scalar else x
        if not isinstance(texts, (list, tuple)) or not all(
                isinstance(t, (str, bytes)) for t in texts):
            raise ValueError(f"`x` must be a string or a list of strings; received "
                             f"{type(x).__name__}.")
        flat, lengths = self.tokenizer.bpe.tokenize_flat(np.array(texts, dtype=object))
        return tf.RaggedTensor.from_row_lengths(flat, lengths), scalar, True

    def _pack(self, rows, length, add_start, add_end):
        t = self.tokenizer
        return pack(rows, length, t.start_token_id, t.end_token_id, t.pad_token_id,
                    add_start, add_end)

    @staticmethod
    def _finish(out, scalar, eager):
        if scalar:
            out = tf.nest.map_structure(lambda t: t[0], out)
        if eager:  # Python in, numpy out (what a Python or grain pipeline carries)
            out = tf.nest.map_structure(lambda t: t.numpy(), out)
        return out

    # --- config and presets ---

    def get_config(self):
        config = super().get_config()
        config.update({
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "sequence_length": self.sequence_length,
            "add_start_token": self.add_start_token,
            "add_end_token": self.add_end_token,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        tokenizer = config.pop("tokenizer", None)
        if isinstance(tokenizer, dict):
            if tokenizer.get("registered_name") != "falcon_tf>FalconTokenizer":
                raise ValueError(f"config `tokenizer` must be a falcon_tf FalconTokenizer; "
                                 f"found {tokenizer.get('registered_name')!r}.")
            tokenizer = FalconTokenizer.from_config(tokenizer.get("config") or {})
        return cls(tokenizer, **config)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """The preset's tokenizer, and its preprocessor settings when it has a
        preprocessor.json (keras-hub writes one beside a causal LM); `kwargs`
        override them, e.g. `sequence_length=256`.

        >>> from falcon_tf import FalconCausalLMPreprocessor
        >>> FalconCausalLMPreprocessor.from_preset("falcon_tiny_random",
        ...                                        sequence_length=16).sequence_length
        16
        """
        from falcon_tf.checkpoints import handles

        checkpoint = handles.resolve(preset)
        tokenizer = FalconTokenizer.from_preset(checkpoint.source)
        settings = preset_settings(checkpoint.directory) if checkpoint.directory else {}
        return cls(tokenizer, **{**settings, **kwargs})

    def save_to_preset(self, preset_dir):
        """Writes the tokenizer (tokenizer/tokenizer.json, and keras-hub's
        tokenizer.json + assets/tokenizer) and preprocessor.json, in keras-hub's
        identity: keras-hub's `FalconCausalLMPreprocessor.from_preset` and
        `FalconTokenizer.from_preset` read the preset as ours do."""
        from falcon_tf.artifacts import manifest

        preset_dir = os.fspath(preset_dir)
        tokenizer = save_tokenizer_to_preset(self.tokenizer, preset_dir)
        manifest.atomic_write(os.path.join(preset_dir, PREPROCESSOR_FILE),
                              json.dumps(self.keras_hub_document(tokenizer), indent=4) + "\n")

    def keras_hub_document(self, tokenizer_document):
        """preprocessor.json as keras-hub writes it (its tokenizer's config inside)."""
        from falcon_tf.checkpoints.keras_hub import keras_hub_identity

        return {**keras_hub_identity(type(self).__name__, "falcon_causal_lm_preprocessor"),
                "config": {"name": "falcon_causal_lm_preprocessor", "trainable": True,
                           "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
                           "tokenizer": tokenizer_document, "config_file": PREPROCESSOR_FILE,
                           "sequence_length": self.sequence_length,
                           "add_start_token": self.add_start_token,
                           "add_end_token": self.add_end_token}}


def save_tokenizer_to_preset(tokenizer, preset_dir):
    """Writes `tokenizer` into a preset: tokenizer/tokenizer.json (ours, what
    falcon_tf and the artifacts read), keras-hub's assets/tokenizer vocabulary
    and merges, and keras-hub's tokenizer.json layer config. Returns that config."""
    from falcon_tf.text import bpe
    from falcon_tf.artifacts import contract, manifest
    from falcon_tf.checkpoints.keras_hub import keras_hub_identity

    tokenizer.save_assets(os.path.join(preset_dir, os.path.dirname(contract.TOKENIZER_FILE)))
    vocabulary, merges = tokenizer.bpe.vocabulary_and_merges()
    assets = os.path.join(preset_dir, bpe.KERAS_HUB_ASSETS)
    os.makedirs(assets, exist_ok=True)
    manifest.atomic_write(os.path.join(assets, bpe.KERAS_HUB_VOCABULARY),
                          json.dumps(vocabulary, ensure_ascii=False).encode("utf-8"))
    manifest.atomic_write(os.path.join(assets, bpe.KERAS_HUB_MERGES),
                          ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
                          .encode("utf-8"))
    document = {**keras_hub_identity("FalconTokenizer", "falcon_tokenizer"),
                "config": {"name": "falcon_tokenizer", "trainable": True,
                           "dtype": keras.saving.serialize_keras_object(tokenizer.dtype_policy),
                           "config_file": KERAS_HUB_TOKENIZER_FILE, "sequence_length": None,
                           "add_prefix_space": False,
                           "unsplittable_tokens": [tokenizer.end_token]}}
    manifest.atomic_write(os.path.join(preset_dir, KERAS_HUB_TOKENIZER_FILE),
                          json.dumps(document, indent=4) + "\n")
    return document


def preset_settings(directory):
    """sequence_length, add_start_token and add_end_token from `directory`'s
    preprocessor.json (keras-hub's or ours), read as data; {} without one."""
    path = os.path.join(os.fspath(directory), PREPROCESSOR_FILE)
    if not os.path.isfile(path):
        return {}
    data = read_json(path, "Preset file")
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or data.get("class_name") != "FalconCausalLMPreprocessor":
        raise ValueError(f"{path}: expected a FalconCausalLMPreprocessor config "
                         f"(`class_name` and `config` fields).")
    settings = {}
    for field, kind in _PRESET_FIELDS.items():
        if field in config:
            value = config[field]
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
                raise ValueError(f"{path}: field `config.{field}` must be {kind.__name__}; "
                                 f"found {value!r}.")
            settings[field] = value
    return settings
