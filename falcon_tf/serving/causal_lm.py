"""Server-side loader of the causal LM in an exported SavedModel."""

import numpy as np

from falcon_tf.artifacts import contract

from falcon_tf.runtime import generation
from falcon_tf.serving.backbone import load_version
from falcon_tf.text.bpe import from_artifact as load_tokenizer

DEFAULT_CACHE_LENGTH = contract.CACHE_LENGTH


class FalconCausalLM:
    """The exported causal LM: `generate` with the contract of
    `falcon_tf.FalconCausalLM.generate`, run by the SavedModel's `generate`
    signature (the whole loop in one graph call), plus its `prefill` and
    `decode` signatures as `prefill(...)` / `decode(...)`.
    """

    def __init__(self, loaded, config, tokenizer, cache_length, path):
        self._loaded = loaded
        self._generate = loaded.signatures[contract.GENERATE_SIGNATURE]
        self.prefill = loaded.signatures[contract.SERVING_PREFILL_SIGNATURE]
        self.decode = loaded.signatures[contract.DECODE_SIGNATURE]
        self.tokenizer = tokenizer
        self.vocabulary_size = config["vocabulary_size"]
        self.cache_length = cache_length
        self.path = path

    @classmethod
    def from_preset(cls, preset, version=None, cache_length=DEFAULT_CACHE_LENGTH,
                    verify_checksums=True):
        """Loads `artifacts/<preset>/saved_model/<version>` (the latest by default)
        and the artifact's tokenizer, checking both against the manifest."""
        contract.check_cache_length(cache_length)
        artifact_dir, data, loaded, path = load_version(preset, version, verify_checksums)
        if contract.GENERATE_SIGNATURE not in loaded.signatures:
            raise ValueError(f"{path} has no causal LM signatures (prefill, decode, generate); "
                             f"export it again with this version of falcon-tf.")
        tokenizer = load_tokenizer(artifact_dir, data, verify_checksums)
        return cls(loaded, data["config"], tokenizer, cache_length, path)

    def generate(self, inputs, max_length=None, sampler="greedy", stop_token_ids="auto",
                 seed=None, strip_prompt=False):
        """See `falcon_tf.FalconCausalLM.generate`; every argument is checked
        before the graph runs."""
        import tensorflow as tf

        request = generation.prepare(inputs, self.tokenizer, self.vocabulary_size,
                                     self.cache_length, max_length, sampler, stop_token_ids,
                                     seed)
        width = request.longest
        ids = np.zeros((len(request.rows), width), np.int32)
        mask = np.zeros_like(ids)
        for i, row in enumerate(request.rows):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        k, p, temperature = request.sampler.parameters()
        out = self._generate(
            token_ids=tf.constant(ids), padding_mask=tf.constant(mask),
            max_length=tf.constant(request.max_length), top_k=tf.constant(k),
            top_p=tf.constant(p, tf.float32), temperature=tf.constant(temperature, tf.float32),
            seed=tf.constant(request.seed), stop_token_ids=tf.constant(
                request.stop_token_ids, tf.int32, shape=[len(request.stop_token_ids)]))
        ends = out["padding_mask"].numpy().sum(axis=1)
        return request.format(out["token_ids"].numpy(), ends, strip_prompt)
