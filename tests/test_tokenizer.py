"""FalconTokenizer against Hugging Face `tokenizers` and keras-hub's FalconTokenizer."""

import json

import numpy as np
import pytest

from falcon_tf import FalconTokenizer
from falcon_tf.tokenizer import END_TOKEN, synthetic_vocabulary

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def tokenize(self, inputs):\n    return [self.encode(x) for x in inputs]\n",
    "Zürich, São Paulo, Kraków, Ελληνικά, русский, 日本語のテキスト, 한국어, עברית",
    "Numbers 12345 and 3.14159, dates 2026-11-26, emails a.b@example.com",
    "Emoji 🙂🚀👩‍💻 and symbols ∑∫√ ©®™",
]
KERAS_HUB_DEPARTS = "def f(x):\n    return x ** 2  # square\n"
CORPUS = [
    "",
    "Hello world",
    " leading space and trailing space ",
    "whitespace   runs\t\ttabs\n\nnewlines\r\n   ",
    "The quick brown fox jumps over the lazy dog.",
    "Zürich São Paulo Kraków Ελληνικά русский",
    "日本語のテキスト 한국어 עברית العربية",
    "🙂🚀👩‍💻 emoji with ZWJ 🏳️‍🌈",
    KERAS_HUB_DEPARTS,
    "if (a != b && c <= d) { return a[0]->next; }",
    "numbers 0 7 42 1234567890 3.14159 -1e-9",
    "it's don't we'll I'm they've she'd",
    "mixed\u00a0nbsp\u2003em-space\u200bzero-width",
    "unseen characters: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ ⅀",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GPT-2-style byte-level BPE trained here; its vocab.json and merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[END_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.model.save(str(folder))  # vocab.json + merges.txt
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer, folder


def test_ids_match_hf_tokenizers_and_roundtrip(trained):
    reference, folder = trained
    ours = FalconTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    for text in CORPUS:
        expected = reference.encode(text).ids
        assert ours(text) == expected, text
        assert ours.detokenize(expected) == text
    assert ours.tokenize(CORPUS) == [reference.encode(t).ids for t in CORPUS]
    assert ours.detokenize(ours.tokenize(CORPUS)) == CORPUS
    ids = ours(CORPUS[4])
    assert ours.detokenize(tuple(ids)) == ours.detokenize(np.array(ids)) == CORPUS[4]
    assert ours.detokenize(ids[0]) == ours.detokenize(ids[:1])
    # The same from the tokenizer.json, and after save_assets.
    from_json = FalconTokenizer.from_file(folder / "tokenizer.json")
    saved = FalconTokenizer.from_file(ours.save_assets(folder / "saved"))
    for tok in (from_json, saved):
        assert tok.tokenize(CORPUS) == ours.tokenize(CORPUS)


def test_ids_match_keras_hub(trained):
    keras_hub = pytest.importorskip("keras_hub")
    _, folder = trained
    vocabulary = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    reference = keras_hub.models.FalconTokenizer(vocabulary=vocabulary, merges=merges)
    ours = FalconTokenizer(vocabulary, merges)
    differ = []
    for text in CORPUS:
        expected = np.asarray(reference(text)).tolist()
        if ours(text) != expected:
            differ.append(text)
            assert ours.detokenize(expected) == text  # another split of the same bytes
    # keras-hub's regex split departs from GPT-2's (and HF's) in one place: a
    # run of spaces after a newline before a word ("\n    return"). GPT-2 keeps
    # one space with the word; keras-hub splits the run in two. We follow HF,
    # which is what Falcon's own tokenizer.json does.
    assert differ == [KERAS_HUB_DEPARTS]
    assert (ours.start_token_id, ours.end_token_id, ours.pad_token_id) == (
        reference.start_token_id, reference.end_token_id, reference.pad_token_id)


def test_special_token_is_never_split(trained):
    _, folder = trained
    ours = FalconTokenizer.from_directory(folder)
    eos = ours.end_token_id
    ids = ours(f"one{END_TOKEN}two {END_TOKEN}")
    assert ids.count(eos) == 2
    assert ours.detokenize(ids) == f"one{END_TOKEN}two {END_TOKEN}"


def test_loads_a_preset_keras_hub_saved(trained, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    _, folder = trained
    vocabulary = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    keras_hub.models.FalconTokenizer(vocabulary=vocabulary, merges=merges).save_to_preset(
        str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()  # keras-hub's config, not HF's format
    ours = FalconTokenizer.from_directory(tmp_path)
    assert ours(CORPUS[4]) == FalconTokenizer.from_directory(folder)(CORPUS[4])


def test_synthetic_vocabulary_for_the_random_preset():
    tokenizer = FalconTokenizer.from_preset("falcon_tiny_random")
    assert tokenizer.vocabulary_size() == 1024
    for text in CORPUS:
        assert tokenizer.detokenize(tokenizer(text)) == text
    with pytest.raises(ValueError, match="synthetic vocabulary"):
        synthetic_vocabulary(5000)


def test_bad_input_is_named(trained, tmp_path):
    _, folder = trained
    ours = FalconTokenizer.from_directory(folder)
    with pytest.raises(ValueError, match="`inputs` must be a string"):
        ours.tokenize(42)
    size = ours.vocabulary_size()
    with pytest.raises(ValueError, match=rf"Token ids must be integers in \[0, {size}\)"):
        ours.detokenize([1, size])
    with pytest.raises(FileNotFoundError, match="No tokenizer files"):
        FalconTokenizer.from_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match="Merges file not found"):
        FalconTokenizer({"a": 0}, str(tmp_path / "merges.txt"))
    with pytest.raises(ValueError, match="no '<|endoftext|>' token"):
        FalconTokenizer({"a": 0, "b": 1, "ab": 2}, ["a b"])
    with pytest.raises(ValueError, match="Merge rule 0"):
        FalconTokenizer({"a": 0, END_TOKEN: 1}, ["a c"])
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable tokenizer.json"):
        FalconTokenizer.from_file(tmp_path / "tokenizer.json")
