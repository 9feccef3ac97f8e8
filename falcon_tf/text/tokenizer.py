"""FalconTokenizer: Falcon's byte-level BPE as a Keras layer (keras-hub's API).

Python strings (`str`, `bytes`, lists or numpy arrays of them) are tokenized
in Python and give lists of ids. TensorFlow string tensors, eager or symbolic
(inside `tf.data.Dataset.map` or a `tf.function`), are tokenized through
`tf.numpy_function` with static output specs: one string gives a 1-D int32
tensor, a 1-D batch a `tf.RaggedTensor` (batch, None). `detokenize` mirrors
both. The work is done by `falcon_tf.text.bpe.ByteLevelBPE` (Hugging Face
`tokenizers`), which the runtimes without Keras use directly.

As in keras-hub, the vocabulary is not part of `get_config()`: it travels as
an asset (tokenizer.json inside a `.keras` file; tokenizer files in a
preset). A tokenizer revived from its config alone has no vocabulary until
Keras loads its assets, and says so if used before.
"""

import os

from falcon_tf._keras import keras, tf
from falcon_tf.text.bpe import (  # noqa: F401  (re-exported: the module's public names)
    END_TOKEN,
    HF_TOKENIZER,
    ByteLevelBPE,
    from_artifact,
    synthetic_vocabulary,
)

# Keyword arguments keras.layers.Layer itself understands; anything else is a mistake.
_LAYER_KWARGS = ("name", "trainable")


def _check_dtype(dtype):
    """`dtype` -> the int32 policy; the ids are int32 whatever is asked."""
    try:
        policy = keras.dtype_policies.get(dtype)
    except (ValueError, TypeError):
        policy = None
    if policy is None or policy.name != "int32":
        raise ValueError(f"FalconTokenizer's `dtype` must be 'int32' (the dtype of its ids); "
                         f"received {dtype!r}.")
    return policy


def _is_tensor(value):
    return isinstance(value, (tf.Tensor, tf.RaggedTensor, tf.Variable)) or tf.is_tensor(value)


@keras.saving.register_keras_serializable(package="falcon_tf")
class FalconTokenizer(keras.layers.Layer):
    """Falcon's byte-level BPE tokenizer (keras-hub's `FalconTokenizer` API).

    Args:
        vocabulary: dict token -> id, or the path of a JSON file holding one.
        merges: list of merge rules ("a b" strings or pairs), or the path of a
            merges.txt file.
        dtype: "int32", the dtype of the ids (the only one).
        name, trainable: as for any Keras layer.

    Or build from a tokenizer.json with `FalconTokenizer.from_file(path)`, or
    from any preset, checkpoint or artifact with `from_preset`.

    `<|endoftext|>` is the start, end and stop token, is never split, and is
    the one entry of `special_tokens`.

    Example:

    >>> from falcon_tf import FalconTokenizer
    >>> vocab = {"<|endoftext|>": 0, "a": 1, "Ġquick": 2, "Ġfox": 3, "Ġ": 4, "q": 5,
    ...          "u": 6, "i": 7, "c": 8, "k": 9, "f": 10, "o": 11, "x": 12, "Ġq": 13,
    ...          "ui": 14, "ck": 15, "uick": 16, "Ġf": 17, "ox": 18}
    >>> merges = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick", "Ġ f", "o x", "Ġf ox"]
    >>> tokenizer = FalconTokenizer(vocabulary=vocab, merges=merges)
    >>> tokenizer("a quick fox")
    [1, 2, 3]
    >>> tokenizer.detokenize([1, 2, 3])
    'a quick fox'
    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensor_slices(["a quick fox", "a fox"]).map(tokenizer)
    >>> [ids.tolist() for ids in ds.as_numpy_iterator()]
    [[1, 2, 3], [1, 3]]
    """

    def __init__(self, vocabulary=None, merges=None, *, dtype="int32", _tokenizer=None,
                 **kwargs):
        unknown = sorted(set(kwargs) - set(_LAYER_KWARGS))
        if unknown:
            raise ValueError(f"FalconTokenizer got unknown argument(s) {', '.join(unknown)}; it "
                             f"takes vocabulary, merges, dtype, name and trainable.")
        super().__init__(dtype=_check_dtype(dtype), **kwargs)
        if isinstance(_tokenizer, ByteLevelBPE):
            bpe = _tokenizer
        elif _tokenizer is not None:  # a Hugging Face `tokenizers.Tokenizer`
            bpe = ByteLevelBPE(_tokenizer=_tokenizer)
        elif vocabulary is not None or merges is not None:
            bpe = ByteLevelBPE(vocabulary, merges)
        else:
            bpe = None  # revived from a config: Keras's load_assets brings the vocabulary
        self._bpe = bpe
        self.built = True  # no weights

    # A tokenizer has no weights; strings, bytes and lists are not tensors Keras's
    # layer call could convert. Calling it is calling `tokenize`.
    def __call__(self, inputs, *args, **kwargs):
        return self.call(inputs, *args, **kwargs)

    def call(self, inputs):
        return self.tokenize(inputs)

    @property
    def bpe(self):
        """The `ByteLevelBPE` doing the work (no TensorFlow needed to use it)."""
        return self._loaded()

    @property
    def has_vocabulary(self):
        """False for a tokenizer revived from its config until its assets load."""
        return self._bpe is not None

    def _loaded(self):
        if self._bpe is None:
            raise ValueError(
                "This FalconTokenizer has no vocabulary: it was built from a config, which "
                "does not carry one. Build it with `vocabulary` and `merges` or from_preset, "
                "or load it with keras.models.load_model (its vocabulary is an asset).")
        return self._bpe

    # --- constructors ---

    @classmethod
    def from_file(cls, path):
        """From a Hugging Face tokenizer.json (as written by `save_assets`)."""
        return cls(_tokenizer=ByteLevelBPE.from_file(path))

    @classmethod
    def from_directory(cls, directory):
        """From whichever tokenizer files `directory` holds (see `falcon_tf.text.bpe`)."""
        return cls(_tokenizer=ByteLevelBPE.from_directory(directory))

    @classmethod
    def from_preset(cls, preset):
        """From a builtin preset, a kaggle:// or hf:// handle, a preset or
        checkpoint directory, or an exported artifact directory.

        >>> from falcon_tf import FalconTokenizer
        >>> tokenizer = FalconTokenizer.from_preset("falcon_tiny_random")
        >>> tokenizer.vocabulary_size()
        1024
        """
        return cls(_tokenizer=ByteLevelBPE.from_preset(preset))

    # --- tokens ---

    @property
    def start_token(self):
        return self.bpe.start_token

    @property
    def end_token(self):
        return self.bpe.end_token

    @property
    def start_token_id(self):
        return self.bpe.start_token_id

    @property
    def end_token_id(self):
        return self.bpe.end_token_id

    @property
    def pad_token_id(self):
        return self.bpe.pad_token_id

    @property
    def special_tokens(self):
        """Tokens that mark text rather than spell it (stripped by the
        preprocessor's `generate_postprocess`)."""
        return self.bpe.special_tokens

    @property
    def special_token_ids(self):
        return self.bpe.special_token_ids

    def vocabulary_size(self):
        return self.bpe.vocabulary_size()

    def get_vocabulary(self):
        return self.bpe.get_vocabulary()

    def id_to_token(self, id):
        return self.bpe.id_to_token(id)

    def token_to_id(self, token):
        return self.bpe.token_to_id(token)

    # --- tokenizing ---

    def tokenize(self, inputs):
        """Strings -> ids.

        A string -> list of ids; a list (or 1-D numpy array) of strings ->
        list of lists. A scalar string tensor -> (n,) int32 tensor; a 1-D
        string tensor -> int32 `tf.RaggedTensor` (batch, None).
        """
        if not _is_tensor(inputs):
            return self.bpe.tokenize(inputs)
        self._loaded()  # fails here, naming the cause, rather than inside the graph
        if isinstance(inputs, tf.RaggedTensor) or inputs.dtype != tf.string:
            raise ValueError(f"`inputs` must be a string tensor (a scalar or a 1-D batch); "
                             f"received {type(inputs).__name__} of dtype {inputs.dtype.name}.")
        rank = inputs.shape.rank
        if rank not in (0, 1):
            raise ValueError(f"`inputs` must be a scalar string or a 1-D batch of strings; "
                             f"received a tensor of shape {inputs.shape}.")
        flat, lengths = tf.numpy_function(
            self._tokenize_numpy, [tf.reshape(inputs, [-1])], [tf.int32, tf.int64],
            stateful=False, name="falcon_tokenize")
        flat.set_shape([None])
        lengths.set_shape([None] if rank else [1])
        if rank == 0:
            return flat
        return tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)

    def detokenize(self, ids):
        """Ids -> strings: the inverse of `tokenize`, form for form (a tensor
        gives a tf.string tensor: a scalar for one row, (batch,) for many)."""
        if not _is_tensor(ids):
            return self.bpe.detokenize(ids)
        self._loaded()
        if isinstance(ids, tf.RaggedTensor):
            if ids.ragged_rank != 1 or ids.shape.rank != 2:
                raise ValueError(f"`ids` must be (batch, None); received a RaggedTensor of "
                                 f"shape {ids.shape}.")
            flat, lengths, rank = ids.values, ids.row_lengths(), 2
        else:
            ids = tf.convert_to_tensor(ids)
            rank = ids.shape.rank
            if rank not in (1, 2) or not ids.dtype.is_integer:
                raise ValueError(f"`ids` must be integers of shape (n,) or (batch, n); "
                                 f"received {ids.dtype.name} of shape {ids.shape}.")
            rows = ids[None] if rank == 1 else ids
            flat = tf.reshape(rows, [-1])
            lengths = tf.fill([tf.shape(rows)[0]], tf.cast(tf.shape(rows)[1], tf.int64))
        text = tf.numpy_function(
            self._detokenize_numpy, [tf.cast(flat, tf.int32), tf.cast(lengths, tf.int64)],
            tf.string, stateful=False, name="falcon_detokenize")
        text.set_shape([None])
        return text[0] if rank == 1 else text

    def _tokenize_numpy(self, strings):
        return self.bpe.tokenize_flat(strings)

    def _detokenize_numpy(self, flat, lengths):
        return self.bpe.detokenize_flat(flat, lengths)

    # --- Keras saving: the vocabulary is an asset ---

    def get_config(self):
        return super().get_config()  # name, trainable, dtype: no vocabulary

    def save_assets(self, directory):
        """Writes `directory`/tokenizer.json (Hugging Face's format), what the
        device side and `from_file` read; atomically. Returns the path."""
        return self.bpe.save_assets(directory)

    def load_assets(self, directory):
        self._bpe = ByteLevelBPE.from_file(os.path.join(directory, HF_TOKENIZER))
