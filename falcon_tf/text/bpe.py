"""Falcon's byte-level BPE on Hugging Face `tokenizers`, with no TensorFlow or
Keras: what every runtime tokenizes with (the on-device loader included).
`falcon_tf.FalconTokenizer`, the Keras layer, wraps it.

Reads keras-hub's tokenizer assets (vocabulary.json + merges.txt), Hugging
Face's (tokenizer.json, or vocab.json + merges.txt) and an exported artifact's
tokenizer/tokenizer.json. A tokenizer.json is used as written (Falcon's own
adds digit and punctuation splitting to the byte-level pre-tokenizer); from a
vocabulary and merges the tokenizer is GPT-2's byte-level BPE, as keras-hub's.
`<|endoftext|>` is the start, end and stop token and is never split.
"""

import json
import os

from falcon_tf.artifacts import contract
from falcon_tf.json_file import json_or_none

END_TOKEN = "<|endoftext|>"
# keras-hub's Falcon files
KERAS_HUB_ASSETS = os.path.join("assets", "tokenizer")
KERAS_HUB_VOCABULARY = "vocabulary.json"
KERAS_HUB_MERGES = "merges.txt"
# Hugging Face's
HF_TOKENIZER = "tokenizer.json"
HF_VOCABULARY = "vocab.json"
HF_MERGES = "merges.txt"


def _is_keras_config(path):
    """True for keras-hub's tokenizer.json (a layer config naming its class)."""
    data = json_or_none(path)
    return isinstance(data, dict) and "class_name" in data and "model" not in data


def _read_merges(path):
    merges = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}, line {number}: a merge rule is two symbols separated "
                                 f"by one space; found {line!r}.")
            merges.append((parts[0], parts[1]))
    return merges


def _as_merges(merges, source="`merges`"):
    out = []
    for i, rule in enumerate(merges):
        parts = rule.split(" ") if isinstance(rule, str) else list(rule)
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(f"{source}[{i}] must be two symbols ('a b' or a pair); "
                             f"received {rule!r}.")
        out.append(tuple(parts))
    return out


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def synthetic_vocabulary(size):
    """A byte-level BPE vocabulary of exactly `size` tokens with no training data:
    the 256 byte symbols, `<|endoftext|>`, then merges of space + letter, letter
    pairs and digit pairs, in that order. For the random-weight preset only."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet(), key=lambda s: ord(s))
    vocabulary = {s: i for i, s in enumerate(symbols)}
    vocabulary[END_TOKEN] = len(vocabulary)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    candidates = ([("Ġ", c) for c in letters] + [(a, b) for a in letters for b in letters]
                  + [(a, b) for a in "0123456789" for b in "0123456789"])
    merges = []
    for a, b in candidates:
        if len(vocabulary) >= size:
            break
        vocabulary[a + b] = len(vocabulary)
        merges.append((a, b))
    if len(vocabulary) != size:
        raise ValueError(f"A synthetic vocabulary holds 257 to {257 + len(candidates)} tokens; "
                         f"asked for {size}.")
    return vocabulary, merges


class ByteLevelBPE:
    """Falcon's byte-level BPE tokenizer in plain Python (numpy and `tokenizers`).

    Args:
        vocabulary: dict token -> id, or the path of a JSON file holding one.
        merges: list of merge rules ("a b" strings or pairs), or the path of a
            merges.txt file.

    Or build from a tokenizer.json with `ByteLevelBPE.from_file(path)`, or
    from any preset, checkpoint or artifact with `from_preset`. Strings in,
    lists of ids out; `falcon_tf.FalconTokenizer` adds the Keras layer,
    tensors and `tf.data`.
    """

    def __init__(self, vocabulary=None, merges=None, *, _tokenizer=None):
        if _tokenizer is None:
            _tokenizer = self._build(vocabulary, merges)
        self._tokenizer = _tokenizer
        for token in (END_TOKEN,):
            if _tokenizer.token_to_id(token) is None:
                raise ValueError(f"The vocabulary has no {token!r} token, which Falcon uses as "
                                 f"its start and end token.")
        self.end_token = self.start_token = END_TOKEN
        self.end_token_id = self.start_token_id = _tokenizer.token_to_id(END_TOKEN)
        self.pad_token_id = 0  # as keras-hub's; padding is masked, so its id never matters

    @staticmethod
    def _build(vocabulary, merges):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        if isinstance(vocabulary, (str, os.PathLike)):
            path = os.fspath(vocabulary)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Vocabulary file not found: {path}")
            with open(path, encoding="utf-8") as f:
                try:
                    vocabulary = json.load(f)
                except ValueError as err:
                    raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(vocabulary, dict) or not vocabulary or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in vocabulary.items()):
            raise ValueError("`vocabulary` must be a non-empty dict of token (str) -> id (int), "
                             "or the path of a JSON file holding one.")
        if sorted(vocabulary.values()) != list(range(len(vocabulary))):
            raise ValueError("`vocabulary` ids must be 0 .. size - 1, each once.")
        if isinstance(merges, (str, os.PathLike)):
            if not os.path.isfile(merges):
                raise FileNotFoundError(f"Merges file not found: {os.fspath(merges)}")
            merges = _read_merges(os.fspath(merges))
        elif merges is None:
            raise ValueError("`merges` is required with `vocabulary`: a list of merge rules or "
                             "the path of a merges.txt file.")
        else:
            merges = _as_merges(merges)
        for i, (a, b) in enumerate(merges):
            if a not in vocabulary or b not in vocabulary or a + b not in vocabulary:
                raise ValueError(f"Merge rule {i} ({a!r} {b!r}) uses or makes a token that is "
                                 f"not in the vocabulary.")
        tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        if END_TOKEN in vocabulary:
            tokenizer.add_special_tokens([END_TOKEN])
        return tokenizer

    @classmethod
    def from_file(cls, path):
        """From a Hugging Face tokenizer.json (as written by `save_assets`)."""
        from tokenizers import Tokenizer

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Tokenizer file not found: {path}")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as err:  # tokenizers raises its own Exception type
            raise ValueError(f"{path} is not a readable tokenizer.json: "
                             f"{str(err).splitlines()[0]}") from None
        return cls(_tokenizer=tokenizer)

    @classmethod
    def from_directory(cls, directory):
        """From whichever tokenizer files `directory` holds (see the module docstring)."""
        directory = os.fspath(directory)
        exported = os.path.join(directory, contract.TOKENIZER_FILE)
        if os.path.isfile(exported):
            return cls.from_file(exported)
        keras_hub = (os.path.join(directory, KERAS_HUB_ASSETS, KERAS_HUB_VOCABULARY),
                     os.path.join(directory, KERAS_HUB_ASSETS, KERAS_HUB_MERGES))
        if all(os.path.isfile(p) for p in keras_hub):
            # A keras-hub preset; its top-level tokenizer.json is keras-hub's
            # layer config, not a Hugging Face tokenizer.
            return cls(*keras_hub)
        hf = os.path.join(directory, HF_TOKENIZER)
        if os.path.isfile(hf) and not _is_keras_config(hf):
            return cls.from_file(hf)
        pairs = [(os.path.join(directory, "tokenizer", HF_VOCABULARY),
                  os.path.join(directory, "tokenizer", HF_MERGES)),
                 (os.path.join(directory, HF_VOCABULARY), os.path.join(directory, HF_MERGES))]
        for vocabulary, merges in pairs:
            if os.path.isfile(vocabulary) and os.path.isfile(merges):
                return cls(vocabulary, merges)
        raise FileNotFoundError(
            f"No tokenizer files in {directory}: looked for {contract.TOKENIZER_FILE}, "
            f"{HF_TOKENIZER}, {KERAS_HUB_ASSETS}/{KERAS_HUB_VOCABULARY} + {KERAS_HUB_MERGES}, "
            f"and {HF_VOCABULARY} + {HF_MERGES}.")

    @classmethod
    def from_preset(cls, preset):
        """From a builtin preset, a kaggle:// or hf:// handle, a preset or
        checkpoint directory, or an exported artifact directory.

        >>> from falcon_tf.text.bpe import ByteLevelBPE
        >>> ByteLevelBPE.from_preset("falcon_tiny_random").vocabulary_size()
        1024
        """
        from falcon_tf.checkpoints import handles

        checkpoint = handles.resolve(preset)
        if checkpoint.kind == "random":
            return cls(*synthetic_vocabulary(checkpoint.location["config"]["vocabulary_size"]))
        return cls.from_directory(checkpoint.directory)

    # --- tokenizing ---

    def tokenize(self, inputs):
        """A string -> list of ids; a list (or 1-D array) of strings -> list of
        lists (ragged). Strings may be `str` or UTF-8 `bytes`."""
        import numpy as np

        if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "USO" and inputs.ndim <= 1:
            inputs = inputs.tolist()
        if isinstance(inputs, (str, bytes)):
            return self._tokenizer.encode(_text(inputs), add_special_tokens=False).ids
        if isinstance(inputs, (list, tuple)) and all(isinstance(s, (str, bytes)) for s in inputs):
            return [e.ids for e in self._tokenizer.encode_batch([_text(s) for s in inputs],
                                                                add_special_tokens=False)]
        raise ValueError(f"`inputs` must be a string or a list of strings; received "
                         f"{type(inputs).__name__}.")

    __call__ = tokenize

    def tokenize_flat(self, strings):
        """A 1-D array of UTF-8 bytes -> (every row's ids concatenated, int32;
        each row's length, int64): a ragged batch as two arrays."""
        import numpy as np

        rows = self.tokenize([_text(s) for s in np.asarray(strings, dtype=object).reshape(-1)])
        lengths = np.array([len(r) for r in rows], np.int64)
        flat = np.fromiter((t for r in rows for t in r), np.int32, int(lengths.sum()))
        return flat, lengths

    def detokenize(self, ids):
        """A list of ids -> string; a list of lists (or a 2-D array) -> list of strings."""
        import numpy as np

        if not isinstance(ids, list):  # an array, a tuple or one id
            ids = np.asarray(ids).tolist()
            ids = ids if isinstance(ids, list) else [ids]
        if ids and isinstance(ids[0], list):
            return [self.detokenize(row) for row in ids]
        size = self.vocabulary_size()
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < size]
        if bad:
            raise ValueError(f"Token ids must be integers in [0, {size}); received {bad[:5]}.")
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def detokenize_flat(self, flat, lengths):
        """The inverse of `tokenize_flat`: -> a 1-D object array of UTF-8 bytes."""
        import numpy as np

        ends = np.cumsum(lengths)
        rows = [flat[end - n:end].tolist() for n, end in zip(lengths, ends)]
        return np.array([self.detokenize(r).encode("utf-8") for r in rows] or [], dtype=object)

    @property
    def special_tokens(self):
        """Tokens that mark text rather than spell it: Falcon's one, `<|endoftext|>`."""
        return [END_TOKEN]

    @property
    def special_token_ids(self):
        return [self.end_token_id]

    def vocabulary_size(self):
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocabulary(self):
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]

    def id_to_token(self, id):
        token = self._tokenizer.id_to_token(int(id))
        if token is None:
            raise ValueError(f"`id` must be in [0, {self.vocabulary_size()}); received {id}.")
        return token

    def token_to_id(self, token):
        id = self._tokenizer.token_to_id(token)
        if id is None:
            raise ValueError(f"{token!r} is not in the vocabulary.")
        return id

    def vocabulary_and_merges(self):
        """(token -> id, [(a, b) merge rules]) of the BPE model, special tokens
        included: what keras-hub's vocabulary.json and merges.txt hold."""
        model = json.loads(self._tokenizer.to_str())["model"]
        merges = [tuple(rule.split(" ")) if isinstance(rule, str) else tuple(rule)
                  for rule in model.get("merges") or []]
        return self._tokenizer.get_vocab(with_added_tokens=True), merges

    def save_assets(self, directory):
        """Writes `directory`/tokenizer.json (Hugging Face's format), what the
        device side and `from_file` read; atomically. Returns the path."""
        from falcon_tf.artifacts import manifest

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, HF_TOKENIZER)
        manifest.atomic_write(path, self._tokenizer.to_str(pretty=False).encode("utf-8"))
        return path


def from_artifact(artifact_dir, data, verify_checksums=True):
    """The exported artifact's tokenizer, checked against its manifest `data`;
    None when the artifact has none."""
    from falcon_tf.artifacts import manifest

    entry = data.get("tokenizer")
    if not entry:
        return None
    if verify_checksums:
        manifest.verify(artifact_dir, entry["files"])
    return ByteLevelBPE.from_file(os.path.join(artifact_dir, contract.TOKENIZER_FILE))
