"""falcon_tf's models through keras-hub's own test harness.

`keras_hub.src.tests.test_case.TestCase` is what keras-hub runs on every one of
its models: config and serialization round trips, variable sequence lengths,
compiled predict, mixed precision, quantization, `.keras` saving, tf.data and
grain pipelines, fit and predict with and without the preprocessor. Here it
runs on falcon_tf's backbone (each family variant), causal LM, tokenizer and
preprocessor, on tiny configs and a vocabulary built in the test. Where the
harness can compare against keras-hub's output, the expected values come from
keras-hub's own classes on the same vocabulary.

Last, a keras-hub user's script runs unchanged but for its import line, on
keras-hub and on falcon_tf.
"""

import os
from unittest import mock

import numpy as np
import pytest
from absl.testing import parameterized
from keras_hub.src.tests.test_case import TestCase

from conftest import FAMILY, tiny_kwargs
from falcon_tf import (FalconBackbone, FalconCausalLM, FalconCausalLMPreprocessor,
                       FalconTokenizer)
from falcon_tf.text.tokenizer import synthetic_vocabulary

VARIANTS = [(name, name) for name in sorted(FAMILY)]
CORPUS = ["airplane at airport", "the quick brown fox jumps over the lazy dog",
          "the cat sat on the mat", "a dog ran in the park"] * 8


def tiny_vocabulary():
    """A byte-level BPE trained here on CORPUS, keras-hub's constructor arguments:
    (vocabulary dict, merges as "a b" strings)."""
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from falcon_tf.text.tokenizer import END_TOKEN

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCABULARY_SIZE, special_tokens=[END_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = tokenizer.model.save(folder)
        with open(merges_file, encoding="utf-8") as f:
            merges = [line.rstrip("\n") for line in f if not line.startswith("#version")]
    return tokenizer.get_vocab(), [m for m in merges if m]


VOCABULARY_SIZE = 320  # the 256 bytes, the end token and merges up to the whole words


class FalconBackboneHarnessTest(TestCase):
    def setUp(self):
        self.input_data = {
            "token_ids": np.array([[1, 4, 6, 2, 3], [5, 2, 9, 0, 0]], "int32"),
            "padding_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "int32"),
        }

    def init_kwargs(self, variant):
        return {**tiny_kwargs(), **FAMILY[variant]}

    @parameterized.named_parameters(VARIANTS)
    def test_backbone_basics(self, variant):
        self.run_backbone_test(
            cls=FalconBackbone, init_kwargs=self.init_kwargs(variant),
            input_data=self.input_data, expected_output_shape=(2, 5, 32),
            run_mixed_precision_check=False, run_quantization_check=False)

    @parameterized.named_parameters(VARIANTS)
    def test_mixed_precision(self, variant):
        self.run_precision_test(FalconBackbone, self.init_kwargs(variant), self.input_data)

    @parameterized.named_parameters(VARIANTS)
    def test_quantization(self, variant):
        backbone = FalconBackbone(**self.init_kwargs(variant))
        self.run_quantization_test(backbone, FalconBackbone, self.init_kwargs(variant),
                                   self.input_data)

    @parameterized.named_parameters(VARIANTS)
    def test_saved_model(self, variant):
        self.run_model_saving_test(cls=FalconBackbone, init_kwargs=self.init_kwargs(variant),
                                   input_data=self.input_data)


class FalconTokenizerHarnessTest(TestCase):
    def setUp(self):
        self.vocabulary, self.merges = tiny_vocabulary()
        self.init_kwargs = {"vocabulary": self.vocabulary, "merges": self.merges}
        self.input_data = ["airplane at airport", " the quick brown fox"]

    def test_tokenizer_basics(self):
        import keras_hub

        expected = keras_hub.models.FalconTokenizer(**self.init_kwargs)(self.input_data)
        expected = [np.asarray(row).tolist() for row in expected]
        self.assertEqual(expected[0], [self.vocabulary[w] for w in ("airplane", "Ġat",
                                                                    "Ġairport")])
        output = self.run_preprocessing_layer_test(
            cls=FalconTokenizer, init_kwargs=self.init_kwargs, input_data=self.input_data,
            expected_output=expected, return_output=True)
        # The harness checks detokenize on keras-hub's own Tokenizer class only.
        tokenizer = FalconTokenizer(**self.init_kwargs)
        self.assertEqual(tokenizer.detokenize(output), self.input_data)

    def test_errors_name_the_argument(self):
        with self.assertRaisesRegex(ValueError, "`merges` is required"):
            FalconTokenizer(vocabulary=self.vocabulary)
        with self.assertRaisesRegex(ValueError, "has no vocabulary"):
            FalconTokenizer.from_config(FalconTokenizer(**self.init_kwargs).get_config())(
                "text")


class FalconCausalLMPreprocessorHarnessTest(TestCase):
    def setUp(self):
        import keras_hub

        vocabulary, merges = tiny_vocabulary()
        self.tokenizer = FalconTokenizer(vocabulary=vocabulary, merges=merges)
        self.reference = keras_hub.models.FalconCausalLMPreprocessor(
            keras_hub.models.FalconTokenizer(vocabulary=vocabulary, merges=merges),
            sequence_length=8)
        self.init_kwargs = {"tokenizer": self.tokenizer, "sequence_length": 8}
        self.input_data = ["airplane at airport"]

    def test_preprocessor_basics(self):
        expected = self.reference(self.input_data)
        self.run_preprocessor_test(
            cls=FalconCausalLMPreprocessor, init_kwargs=self.init_kwargs,
            input_data=self.input_data, expected_output=expected)

    def test_no_start_end_token(self):
        input_data = ["airplane at airport"] * 4
        preprocessor = FalconCausalLMPreprocessor(**self.init_kwargs, add_start_token=False,
                                                  add_end_token=False)
        x, y, sample_weight = preprocessor(input_data)
        ids = self.tokenizer(input_data[0])
        self.assertAllEqual(x["token_ids"], [ids + [0] * (8 - len(ids))] * 4)
        self.assertAllEqual(y[:, :len(ids) - 1], [ids[1:]] * 4)
        self.assertAllEqual(sample_weight.sum(axis=1), [len(ids) - 1] * 4)

    def test_generate_preprocess_and_postprocess(self):
        x = self.reference.generate_preprocess("airplane at airport")
        ours = FalconCausalLMPreprocessor(**self.init_kwargs)
        self.assertAllEqual(ours.generate_preprocess("airplane at airport")["token_ids"],
                            x["token_ids"])
        self.assertEqual(ours.generate_postprocess(x), "airplane at airport")


class FalconCausalLMHarnessTest(TestCase):
    def setUp(self):
        vocabulary, merges = tiny_vocabulary()
        self.tokenizer = FalconTokenizer(vocabulary=vocabulary, merges=merges)
        self.preprocessor = FalconCausalLMPreprocessor(self.tokenizer, sequence_length=8)
        self.vocabulary_size = self.tokenizer.vocabulary_size()
        self.backbone = FalconBackbone(**tiny_kwargs(vocabulary_size=self.vocabulary_size))
        self.init_kwargs = {"preprocessor": self.preprocessor, "backbone": self.backbone,
                            "cache_length": 32}
        self.train_data = (["airplane at airport", " the quick brown fox"],)
        self.input_data = self.preprocessor(*self.train_data)[0]

    @pytest.mark.slow
    def test_causal_lm_basics(self):
        self.run_task_test(cls=FalconCausalLM, init_kwargs=self.init_kwargs,
                           train_data=self.train_data,
                           expected_output_shape=(2, 8, self.vocabulary_size))

    def generating_lm(self):
        """One causal LM for the generation tests (its compiled generation is
        traced once): this test's preprocessor, compiled with the defaults."""
        cls = type(self)
        if getattr(cls, "_generating_lm", None) is None:
            cls._generating_lm = FalconCausalLM(**self.init_kwargs)
        causal_lm = cls._generating_lm
        causal_lm.preprocessor = self.preprocessor
        causal_lm.compile()
        return causal_lm

    def test_generate(self):
        causal_lm = self.generating_lm()
        prompt = " airplane at airport"
        self.assertIn(prompt, causal_lm.generate(prompt))
        # Token ids in, without the preprocessor: the dict is filled to its width.
        prompt_ids = self.preprocessor.generate_preprocess([prompt])
        causal_lm.preprocessor = None
        outputs = causal_lm.generate(prompt_ids, stop_token_ids=None)
        self.assertEqual(outputs["token_ids"].shape, (1, 8))
        length = int(prompt_ids["padding_mask"].sum())
        self.assertAllEqual(outputs["token_ids"][:, :length], prompt_ids["token_ids"][:, :length])
        self.assertAllEqual(outputs["padding_mask"], np.ones((1, 8), bool))

    def test_early_stopping(self):
        causal_lm = FalconCausalLM(**self.init_kwargs)
        call_with_cache = causal_lm.call_with_cache
        end = self.tokenizer.end_token_id

        def always_end(*args, **kwargs):  # the end token is the only likely one
            logits, caches = call_with_cache(*args, **kwargs)
            import tensorflow as tf

            bump = tf.one_hot(end, self.vocabulary_size, on_value=1e9, dtype=logits.dtype)
            return logits + bump, caches

        with mock.patch.object(causal_lm, "call_with_cache", wraps=always_end):
            prompt = [" airplane at airport", " the quick brown fox"]
            self.assertEqual(causal_lm.generate(prompt), prompt)

    def test_generate_compilation(self):
        causal_lm = self.generating_lm()
        causal_lm.generate(" airplane at airport")
        first = causal_lm.generate_function
        causal_lm.generate(" airplane at airport")
        self.assertIs(causal_lm.generate_function, first)
        causal_lm.compile(sampler="greedy")
        self.assertIsNone(causal_lm.generate_function)

    def test_saved_model(self):
        self.run_model_saving_test(cls=FalconCausalLM, init_kwargs=self.init_kwargs,
                                   input_data=self.input_data)


# A keras-hub user's script. `{import_line}` is its one line that differs.
USER_SCRIPT = """
import keras
{import_line}

tokenizer = models.FalconTokenizer(vocabulary=vocabulary, merges=merges)
preprocessor = models.FalconCausalLMPreprocessor(tokenizer, sequence_length=16)
backbone = models.FalconBackbone(
    vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_attention_heads=2,
    hidden_dim=32, intermediate_dim=64)
causal_lm = models.FalconCausalLM(backbone=backbone, preprocessor=preprocessor)
causal_lm.compile(sampler="top_k")
history = causal_lm.fit(texts, batch_size=len(texts), epochs=1, verbose=0)  # one step
sampled = causal_lm.generate(prompts, max_length=12)

causal_lm.save(os.path.join(folder, "lm.keras"))
restored = keras.models.load_model(os.path.join(folder, "lm.keras"))
causal_lm.compile(sampler="greedy")
restored.compile(sampler="greedy")
generated = causal_lm.generate(prompts, max_length=12)
restored_generated = restored.generate(prompts, max_length=12)

causal_lm.quantize("int8")
quantized_logits = causal_lm.predict(texts, verbose=0)
quantized_generated = causal_lm.generate(prompts, max_length=12)
causal_lm.save_to_preset(os.path.join(folder, "preset"))
reloaded = models.FalconCausalLM.from_preset(os.path.join(folder, "preset"))
reloaded.compile(sampler="greedy")
reloaded_logits = reloaded.predict(texts, verbose=0)
reloaded_generated = reloaded.generate(prompts, max_length=12)
"""


@pytest.mark.slow
@pytest.mark.parametrize("library", ["keras_hub", "falcon_tf"])
def test_a_keras_hub_users_script_runs_unchanged_but_the_import(tmp_path, library):
    import keras

    import_line = {"keras_hub": "from keras_hub import models",
                   "falcon_tf": "import falcon_tf as models"}[library]
    vocabulary, merges = tiny_vocabulary()
    namespace = {"os": os, "vocabulary": vocabulary, "merges": merges,
                 "texts": ["the cat sat on the mat", "a dog ran in the park"],
                 "prompts": ["the cat", "a dog"], "folder": str(tmp_path)}
    keras.utils.set_random_seed(0)
    exec(USER_SCRIPT.format(import_line=import_line), namespace)  # noqa: S102
    run = namespace
    assert type(run["causal_lm"]).__module__.split(".")[0] == library
    assert np.isfinite(run["history"].history["loss"]).all()
    assert all(isinstance(t, str) and t.startswith(p)
               for t, p in zip(run["sampled"], run["prompts"]))
    assert run["restored_generated"] == run["generated"]
    np.testing.assert_allclose(run["reloaded_logits"], run["quantized_logits"], atol=1e-5)
    assert run["reloaded_generated"] == run["quantized_generated"]
    # Either library's from_preset loads the other's quantized causal-LM preset
    # (keras-hub through the task.json it writes, and falcon_tf writes too).
    import keras_hub

    import falcon_tf

    other = {"keras_hub": falcon_tf, "falcon_tf": keras_hub.models}[library]
    crossed = other.FalconCausalLM.from_preset(os.path.join(str(tmp_path), "preset"))
    crossed.compile(sampler="greedy")
    np.testing.assert_allclose(crossed.predict(namespace["texts"], verbose=0),
                               run["quantized_logits"], atol=1e-5)
    # The preset's tokenizer and preprocessor load in the other library too.
    preset = os.path.join(str(tmp_path), "preset")
    tokenizer = other.FalconTokenizer.from_preset(preset)
    np.testing.assert_array_equal(np.asarray(tokenizer(namespace["texts"][0])),
                                  np.asarray(run["tokenizer"](namespace["texts"][0])))
    assert other.FalconCausalLMPreprocessor.from_preset(preset).sequence_length == 16
    # Greedy tokens are not compared across libraries: this one-step model's
    # logits are near ties that each library's own cached decoding breaks its way.
    assert all(t.startswith(p) for t, p in zip(crossed.generate(namespace["prompts"],
                                                                max_length=12),
                                               namespace["prompts"]))


# Quantized presets, both ways. Our quantized preset is keras-hub's layout (its
# separate q/k/v layers): the same config.json identity and dtype map, and the
# same datasets, bit for bit, as keras-hub's own quantize + save_to_preset.

def _datasets(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _keras_hub_loads(directory):
    import keras_hub

    try:
        return keras_hub.models.FalconBackbone.from_preset(str(directory))
    except ValueError as err:
        return err


@pytest.mark.parametrize("mode", ["int8", "int4", "float8"])
def test_quantized_presets_are_keras_hubs_layout_both_ways(tmp_path, mode):
    import json

    import keras_hub

    from conftest import padded_batch, randomize

    # int4: a hidden width of 288 (head_dim 72) gives its 128-wide groups three rows.
    kwargs = tiny_kwargs(num_attention_heads=4, head_dim=72 if mode == "int4" else 8,
                         vocabulary_size=40)
    ours = randomize(FalconBackbone(**kwargs), scale=0.05)
    ours.save_to_preset(str(tmp_path / "float"))
    theirs = keras_hub.models.FalconBackbone.from_preset(str(tmp_path / "float"))
    x = padded_batch(kwargs["vocabulary_size"])
    ours.quantize(mode)
    theirs.quantize(mode)
    expected = theirs(x).numpy()
    np.testing.assert_allclose(ours(x).numpy(), expected, atol=1e-5)  # the same quantization
    ours.save_to_preset(str(tmp_path / "ours"))
    theirs.save_to_preset(str(tmp_path / "theirs"))

    # The same files: config identity, dtype map entries, every dataset.
    mine, own = ({k: json.loads((tmp_path / d / "config.json").read_text())[k]
                  for k in ("module", "class_name", "registered_name", "config")}
                 for d in ("ours", "theirs"))
    modes = [{key: entry["config"]["mode"] for key, entry in
              c["config"].pop("dtype")["config"]["policy_map"].items()} for c in (mine, own)]
    assert modes[0] == modes[1] and set(modes[0].values()) == {mode + ("/128" * (mode == "int4"))}
    for c in (mine, own):
        c["config"].pop("name")
    assert mine == own
    written, reference = (_datasets(tmp_path / d / "model.weights.h5") for d in ("ours", "theirs"))
    assert sorted(written) == sorted(reference)
    for name, value in reference.items():
        assert written[name].dtype == value.dtype, name
        np.testing.assert_array_equal(written[name], value, err_msg=name)

    # keras-hub reads our weights file into its quantized Falcon ...
    reader = keras_hub.models.FalconBackbone(**kwargs)
    reader.quantize(mode)
    reader.load_weights(str(tmp_path / "ours" / "model.weights.h5"))
    np.testing.assert_array_equal(reader(x).numpy(), expected)
    # ... and its from_preset loads our preset wherever it loads its own: keras-hub
    # 0.32 builds a quantized Falcon's decoder layers float, so it loads neither.
    own_load, our_load = _keras_hub_loads(tmp_path / "theirs"), _keras_hub_loads(tmp_path / "ours")
    if isinstance(own_load, Exception):
        assert type(our_load) is type(own_load)
        assert str(our_load).splitlines()[0] == str(own_load).splitlines()[0]
    else:
        np.testing.assert_array_equal(our_load(x).numpy(), expected)

    # falcon_tf loads keras-hub's own quantized preset: q, k and v fused exactly.
    back = FalconBackbone.from_preset(str(tmp_path / "theirs"))
    assert back.quantization_modes == [mode]
    made = {var.path: var for var in ours.weights}
    assert sorted(made) == sorted(var.path for var in back.weights)
    for read in back.weights:
        np.testing.assert_array_equal(read.numpy(), made[read.path].numpy(), err_msg=read.path)
    np.testing.assert_array_equal(back(x).numpy(), ours(x).numpy())


def test_a_keras_hub_quantized_preset_that_cannot_be_fused_is_refused_by_name(tmp_path):
    import h5py
    import keras_hub

    kwargs = tiny_kwargs()
    theirs = keras_hub.models.FalconBackbone(**kwargs)
    theirs.quantize("float8")
    theirs.save_to_preset(str(tmp_path / "p"))
    weights = tmp_path / "p" / "model.weights.h5"
    scale = "layers/falcon_transformer_decoder/attention_layer/key_dense/vars/4"  # kernel_scale
    with h5py.File(weights, "a") as f:
        assert f[scale].shape == ()
        f[scale][()] = 2.0
    with pytest.raises(ValueError, match=r"model.weights.h5: datasets .*query_dense/vars/4, "
                                         r".*key_dense/vars/4, .*value_dense/vars/4 differ"):
        FalconBackbone.from_preset(str(tmp_path / "p"))
    with h5py.File(weights, "a") as f:
        f["layers/stray/vars/0"] = np.zeros(3, "float32")
    with pytest.raises(ValueError, match="not part of this quantized FalconBackbone: layers/stray"):
        FalconBackbone.from_preset(str(tmp_path / "p"))
