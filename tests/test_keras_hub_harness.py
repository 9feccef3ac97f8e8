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
from falcon_tf.tokenizer import synthetic_vocabulary

VARIANTS = [(name, name) for name in sorted(FAMILY)]
CORPUS = ["airplane at airport", "the quick brown fox jumps over the lazy dog",
          "the cat sat on the mat", "a dog ran in the park"] * 8


def tiny_vocabulary():
    """A byte-level BPE trained here on CORPUS, keras-hub's constructor arguments:
    (vocabulary dict, merges as "a b" strings)."""
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from falcon_tf.tokenizer import END_TOKEN

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
