"""FalconTokenizer against Hugging Face `tokenizers` and keras-hub's FalconTokenizer."""

import json

import numpy as np
import pytest

from falcon_tf import FalconTokenizer
from falcon_tf.text.tokenizer import END_TOKEN, synthetic_vocabulary

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


def test_a_keras_layer_whose_vocabulary_is_an_asset(trained, tmp_path):
    keras = pytest.importorskip("keras")
    _, folder = trained
    ours = FalconTokenizer.from_directory(folder)
    assert isinstance(ours, keras.layers.Layer)
    config = ours.get_config()
    assert set(config) == {"name", "trainable", "dtype"}  # no vocabulary in the config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert isinstance(revived, FalconTokenizer) and revived.get_config() == config
    assert not revived.has_vocabulary
    with pytest.raises(ValueError, match="has no vocabulary: it was built from a config"):
        revived("text")
    ours.save_assets(str(tmp_path))
    revived.load_assets(str(tmp_path))
    assert revived(CORPUS[4]) == ours(CORPUS[4])
    with pytest.raises(ValueError, match="`dtype` must be 'int32'"):
        FalconTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), dtype="float32")
    with pytest.raises(ValueError, match="unknown argument.*sequence_length"):
        FalconTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                        sequence_length=8)


def test_special_tokens_are_the_end_token(trained):
    _, folder = trained
    ours = FalconTokenizer.from_directory(folder)
    assert ours.special_tokens == [END_TOKEN]
    assert ours.special_token_ids == [ours.end_token_id] == [ours.token_to_id(END_TOKEN)]


def test_string_tensors_in_tf_data_and_tf_function_match_python(trained):
    tf = pytest.importorskip("tensorflow")
    _, folder = trained
    ours = FalconTokenizer.from_directory(folder)
    texts = [t for t in CORPUS if t]
    expected = ours.tokenize(texts)
    dataset = tf.data.Dataset.from_tensor_slices(texts)
    one_by_one = [ids.tolist() for ids in dataset.map(ours).as_numpy_iterator()]
    assert one_by_one == expected
    batched = dataset.batch(len(texts)).map(ours).get_single_element()
    assert isinstance(batched, tf.RaggedTensor) and batched.dtype == tf.int32
    assert batched.to_list() == expected
    eager = ours(tf.constant(texts))
    assert eager.to_list() == expected and ours(tf.constant(texts[0])).numpy().tolist() == \
        expected[0]

    @tf.function
    def round_trip(strings):
        return ours.detokenize(ours.tokenize(strings))

    assert [t.decode("utf-8") for t in round_trip(tf.constant(texts)).numpy()] == texts
    dense = tf.constant([expected[1][:3], expected[2][:3]])
    assert [t.decode() for t in ours.detokenize(dense).numpy()] == ours.detokenize(
        [expected[1][:3], expected[2][:3]])
    assert ours.detokenize(tf.constant(expected[1])).numpy().decode() == texts[1]
    # Python bytes and numpy string arrays are text too.
    assert ours.tokenize(np.array(texts[:2])) == expected[:2]
    assert ours.tokenize(texts[1].encode("utf-8")) == expected[1]


def test_bad_tensors_are_named(trained):
    tf = pytest.importorskip("tensorflow")
    _, folder = trained
    ours = FalconTokenizer.from_directory(folder)
    with pytest.raises(ValueError, match="`inputs` must be a string tensor"):
        ours.tokenize(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="scalar string or a 1-D batch"):
        ours.tokenize(tf.constant([["a", "b"]]))
    with pytest.raises(ValueError, match="`ids` must be integers of shape"):
        ours.detokenize(tf.constant([[[1]]]))
