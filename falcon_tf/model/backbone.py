"""FalconBackbone: the Falcon-RW decoder as a Keras functional model."""

import numpy as np

from falcon_tf.checkpoints import presets as _presets
from falcon_tf._keras import keras, tf
from falcon_tf.model.attention_bias import FalconAttentionBias
from falcon_tf.model.config import FalconConfig
from falcon_tf.model.decoder_block import block_class
from falcon_tf.model.dtype_policy import own_policy, resolve_dtype
from falcon_tf.runtime.inputs import validate
from falcon_tf.model.token_embedding import FalconTokenEmbedding
from falcon_tf.untrusted import check_memory

# Keyword arguments keras.Model itself understands; anything else is a mistake.
_MODEL_KWARGS = ("name", "trainable")


def decoder_stack(x, blocks, final_layernorm, run_block):
    """The decoder over embedded tokens (b, s, hidden): each block in turn,
    through `run_block(index, block, x) -> x`, then the final LayerNorm.

    Written once for every caller: the functional graph and
    `FalconBackbone.forward` run the blocks over a whole sequence,
    `FalconBackbone.forward_cached` runs them over new tokens with a
    key/value cache (generation, the causal-LM exporters). The large-model
    exporter converts the same stages one piece at a time (`embed_cached`,
    `block_cached`, `final_layernorm`)."""
    for index, block in enumerate(blocks):
        x = run_block(index, block, x)
    return final_layernorm(x)


def tensor_dim(tensor, axis):
    """A static dimension when known (XLA), else the dynamic one (SavedModel signatures)."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _is_concrete(value):
    """numpy data or an eager tensor: values that can be checked without running."""
    if isinstance(value, (np.ndarray, list, tuple, int)):
        return True
    return tf.is_tensor(value) and tf.executing_eagerly() and hasattr(value, "numpy")


@keras.saving.register_keras_serializable(package="falcon_tf")
class FalconBackbone(keras.Model):
    """The Falcon decoder: keras-hub's `FalconBackbone`, argument for argument,
    and the rest of the Falcon family.

    Token embedding, then `num_layers` blocks of pre-LayerNorm self-attention
    (causal + padding mask) and an exact-GELU MLP, then a final LayerNorm. With
    the defaults this is Falcon-RW: multi-head attention with ALiBi, attention
    then MLP, biases everywhere.

    Args:
        vocabulary_size: int. Rows of the token embedding.
        num_layers: int. Number of decoder blocks.
        num_attention_heads: int. Attention heads; must divide `hidden_dim`.
        hidden_dim: int. Width of the embeddings and hidden states.
        intermediate_dim: int. Width of each MLP's hidden layer.
        layer_norm_epsilon: float. Epsilon of every LayerNorm.
        attention_dropout_rate: float in [0, 1). Dropout on attention
            probabilities; only when training.
        feedforward_dropout_rate: float in [0, 1). Dropout on each MLP output
            (on attention + MLP in parallel blocks); only when training.
        dtype: None, "float32", "bfloat16", "float16", "mixed_bfloat16",
            "mixed_float16" or a `keras.DTypePolicy`; or a
            `keras.dtype_policies.DTypePolicyMap` over one of those that maps
            layer paths to Keras's quantized policies (int8, int4, float8), as
            the config of a quantized model holds (see `quantize`). Softmax,
            LayerNorm and the attention bias compute in float32 whatever it is.
        num_kv_heads: None (one key/value head per query head), 1 (multi-query,
            Falcon-7B) or a divisor of the heads (grouped-query, Falcon-40B/180B).
        position_embedding: "alibi" (Falcon-RW) or "rotary" (the others).
        rope_theta: float. Rotary base frequency.
        parallel_attention: bool. Attention and MLP both read the block input
            and are summed (Falcon-7B/40B/180B), instead of one after the other.
        separate_mlp_layer_norm: bool. With parallel attention, attention and
            MLP each get a LayerNorm (Falcon-40B/180B's "new decoder architecture").
        use_bias: bool. Biases on the attention and MLP projections (LayerNorms
            always have them).

    The arguments after `dtype` are not keras-hub's; their defaults give its
    model exactly.

    Inputs are a dict of int32 `token_ids` and `padding_mask`, each
    (batch, seq); the output is (batch, seq, hidden_dim).

    Example:

    >>> import numpy as np
    >>> from falcon_tf import FalconBackbone
    >>> model = FalconBackbone(vocabulary_size=10, num_layers=2,
    ...     num_attention_heads=2, hidden_dim=32, intermediate_dim=128)
    >>> input_data = {
    ...     "token_ids": np.ones(shape=(1, 12), dtype="int32"),
    ...     "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]),
    ... }
    >>> tuple(model(input_data).shape)
    (1, 12, 32)
    >>> tuple(model.compiled_call(input_data).shape)  # the same, through XLA
    (1, 12, 32)
    """

    presets = _presets.BACKBONE_PRESETS

    def __init__(self, vocabulary_size, num_layers, num_attention_heads, hidden_dim,
                 intermediate_dim, layer_norm_epsilon=1e-05, attention_dropout_rate=0,
                 feedforward_dropout_rate=0, dtype=None, num_kv_heads=None,
                 position_embedding="alibi", rope_theta=10000.0, parallel_attention=False,
                 separate_mlp_layer_norm=False, use_bias=True, **kwargs):
        unknown = sorted(set(kwargs) - set(_MODEL_KWARGS))
        if unknown:
            raise ValueError(
                f"FalconBackbone got unknown argument(s) {', '.join(unknown)}; it takes "
                f"{', '.join(FalconConfig.field_names())}, dtype, name and trainable.")
        config = FalconConfig(
            vocabulary_size=vocabulary_size, num_layers=num_layers,
            num_attention_heads=num_attention_heads, hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim, layer_norm_epsilon=layer_norm_epsilon,
            attention_dropout_rate=attention_dropout_rate,
            feedforward_dropout_rate=feedforward_dropout_rate, num_kv_heads=num_kv_heads,
            position_embedding=position_embedding, rope_theta=rope_theta,
            parallel_attention=parallel_attention,
            separate_mlp_layer_norm=separate_mlp_layer_norm, use_bias=use_bias)
        policy = resolve_dtype(dtype)  # a DTypePolicyMap reaches every layer, by path
        # Sizes from an untrusted config are bounded before any variable exists.
        check_memory(config.parameter_count(), np.dtype(policy.variable_dtype).itemsize
                     if policy.variable_dtype != "bfloat16" else 2, "FalconBackbone")

        # === Layers ===
        embedding = FalconTokenEmbedding(
            config.vocabulary_size, config.hidden_dim, dtype=policy, name="token_embedding")
        attention_bias = FalconAttentionBias(
            config.num_attention_heads, config.head_dim, config.position_embedding,
            config.rope_theta, dtype=policy, name="attention_bias")  # computes in float32
        block = block_class(config)  # sequential (RW) or parallel (7B/40B/180B), chosen once
        blocks = [block(config, dtype=policy, name=f"transformer_layer_{i}")
                  for i in range(config.num_layers)]
        final_layernorm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, dtype=policy, name="final_layernorm")

        # === Functional graph ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        bias = attention_bias(padding_mask)  # computed once, shared by all blocks
        sequence_output = decoder_stack(embedding(token_ids), blocks, final_layernorm,
                                        lambda _, block, x: block(x, *bias))
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs=sequence_output, dtype=policy, **kwargs)

        # keras.Functional does not keep `dtype`; the model's policy is ours.
        self.dtype_policy = policy
        self.falcon_config = config
        # keras-hub exposes the architecture as attributes; so do we.
        for field, value in config.to_dict().items():
            setattr(self, field, value)
        self._token_embedding = embedding
        self.transformer_layers = blocks
        self.attention_bias = attention_bias
        self.final_layernorm = final_layernorm
        # model.predict(...) runs the forward through XLA.
        self.jit_compile = True
        self._compiled_forward = None
        # Set by from_preset when the checkpoint's LM head is not this embedding.
        self.untied_lm_head = None
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            self._check_policy_paths(policy)

    def forward(self, token_ids, padding_mask, embed=None, training=False):
        """The functional graph's forward as direct layer calls, with the token
        lookup swappable: `embed` maps token_ids (b, s) to hidden states
        (b, s, hidden), by default the token embedding (exporters pass a
        lookup in a quantized table). -> sequence_output (b, s, hidden)."""
        x = (embed or self.token_embedding)(token_ids)
        bias = self.attention_bias(padding_mask)
        return decoder_stack(x, self.transformer_layers, self.final_layernorm,
                             lambda _, block, x: block(x, *bias, training=training))

    def forward_cached(self, token_ids, positions, mask_bias, caches, write, embed=None,
                       window=None):
        """The same decoder over new tokens with a key/value cache.

        token_ids, positions: (b, L) int32: the tokens and the cache slots
            they go to (their positions).
        mask_bias: (b, 1, L, C) float32, 0 where a token may attend a slot
            and a large negative number elsewhere (`causal_cache_mask`).
        caches: [k_0, v_0, …], each (b, kv_heads, C, head_dim).
        write: how new keys and values enter a cache: `write(cache, new)`.
        embed: as in `forward`.
        window: None, or a static int: the new tokens attend only the first
            `window` slots (all they may attend when they sit below it), so
            the step reads that much of the cache, not all of it.
        Returns (sequence_output (b, L, hidden), updated caches).
        """
        cache_length = tensor_dim(caches[0], 2)
        if window is not None:
            cache_length, mask_bias = window, mask_bias[..., :window]
        x, position = self.embed_cached(token_ids, positions, cache_length, embed)
        updated = []

        def run_block(index, _, x):
            x, key, value = self.block_cached(index, x, caches[2 * index],
                                              caches[2 * index + 1], mask_bias, position,
                                              write, window)
            updated.extend((key, value))
            return x

        return decoder_stack(x, self.transformer_layers, self.final_layernorm,
                             run_block), updated

    # The stages of `forward_cached`, also exported one by one for large models
    # (converters/export_tflite_large.py).

    def embed_cached(self, token_ids, positions, cache_length, embed=None):
        """-> (x (b, L, hidden), what attention needs of the positions); `embed` as
        in `forward`; `cache_length` the slots attended."""
        x = (embed or self.token_embedding)(token_ids)
        return x, self.attention_bias.cached_position(positions, cache_length)

    def block_cached(self, index, x, cache_key, cache_value, mask_bias, position, write,
                     window=None):
        """Block `index` over the new tokens -> (x, cache_key, cache_value)."""
        block = self.transformer_layers[index]
        with tf.name_scope(block.name):  # exported tensor names follow the layers
            return block.call_cached(x, cache_key, cache_value, mask_bias, position, write,
                                     window)

    def _check_policy_paths(self, policy_map):
        import re

        paths = [layer.path for layer in self._flatten_layers() if layer.path]
        for key in policy_map:
            try:
                found = key in paths or any(re.fullmatch(key, p) for p in paths)
            except re.error:
                found = False
            if not found:
                raise ValueError(f"`dtype` maps {key!r}, which is no layer of this "
                                 f"FalconBackbone; its layer paths are {', '.join(paths)}.")

    @property
    def quantization_modes(self):
        """The Keras quantization modes its layers carry ("int8", ...); empty
        when no layer is quantized."""
        return sorted({layer.quantization_mode for layer in self._flatten_layers()
                       if layer.path and layer.quantization_mode is not None})

    def check_float_weights(self, what):
        """ValueError unless no layer is quantized: `what` (an exporter) reads
        float weights and makes its own quantized variants."""
        if self.quantization_modes:
            raise ValueError(
                f"{what} takes a float model; this FalconBackbone was quantized with Keras "
                f"({', '.join(self.quantization_modes)}). Export the float model and choose "
                f"the exporter's quantized variants instead.")

    def quantize(self, mode=None, **kwargs):
        """Keras's `quantize` (`"int8"`, `"int4"` or `"float8"`): every Dense
        projection, and for int8 and int4 the token embedding with its tied LM
        head, hold quantized weights; LayerNorms stay float. `get_config()` then carries a
        DTypePolicyMap of the quantized layers, so the config, a `.keras` file
        and `save_to_preset` all round-trip."""
        import warnings

        if self.quantization_modes:
            raise ValueError(
                f"This FalconBackbone is already quantized ({', '.join(self.quantization_modes)}); "
                f"Keras quantizes a float model, once.")
        DTypePolicyMap = keras.dtype_policies.DTypePolicyMap
        for layer in self._flatten_layers(include_self=False):
            # Keras's quantize names a layer's new policy after its current one,
            # which a shared map cannot give: each layer takes its own entry.
            if isinstance(layer._dtype_policy, DTypePolicyMap) and layer.path:
                layer._dtype_policy = layer._dtype_policy[layer.path]
        with warnings.catch_warnings():
            # Keras names every layer without a quantized form (LayerNorm,
            # dropout, inputs, the attention bias): they stay as they are by design.
            warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
            # float8: Keras has no float8 embedding, so the embedding stays float.
            warnings.filterwarnings("ignore", message="Invalid quantization mode")
            super().quantize(mode, **kwargs)
        self._compiled_forward = None

    def check_inputs(self, inputs):
        """Refuses concrete inputs the graph would silently clamp or wrap: token ids
        outside the vocabulary, non-integer or wrapping dtypes, a padding mask other
        than 0/1 (ValueError naming the input). Symbolic inputs pass through."""
        if not isinstance(inputs, dict) or not all(_is_concrete(v) for v in inputs.values()):
            return
        validate({k: np.asarray(v) for k, v in inputs.items()}, self.vocabulary_size)

    def __call__(self, inputs, *args, **kwargs):
        self.check_inputs(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self.check_inputs(x)
        return super().predict(x, *args, **kwargs)

    @property
    def token_embedding(self):
        """The embedding layer; `token_embedding(x, reverse=True)` is the tied LM head."""
        return self._token_embedding

    def compiled_call(self, inputs):
        """The inference forward, compiled with XLA (`tf.function(jit_compile=True)`).

        Same inputs and output as `model(inputs)`; compiled once per input shape.
        """
        self.check_inputs(inputs)
        if self._compiled_forward is None:
            self._compiled_forward = tf.function(
                lambda x: self(x, training=False), jit_compile=True, reduce_retracing=True)
        return self._compiled_forward({
            "token_ids": tf.convert_to_tensor(inputs["token_ids"], tf.int32),
            "padding_mask": tf.convert_to_tensor(inputs["padding_mask"], tf.int32),
        })

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self._config_policy()),
            **self.falcon_config.to_dict(),
        }

    def _config_policy(self):
        """The model's policy, or a DTypePolicyMap when any layer is quantized
        (or it was built from one): what rebuilds the same layers."""
        policy = self.dtype_policy
        DTypePolicyMap = keras.dtype_policies.DTypePolicyMap
        entries = {k: policy[k] for k in policy} if isinstance(policy, DTypePolicyMap) else {}
        entries.update({layer.path: own_policy(layer) for layer in self._flatten_layers()
                        if layer.path and layer.quantization_mode is not None})
        if not entries and not isinstance(policy, DTypePolicyMap):
            return policy
        default = policy.default_policy if isinstance(policy, DTypePolicyMap) else policy
        return DTypePolicyMap(default, dict(sorted(entries.items())))

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Builds the model from a preset.

        Args:
            preset: a builtin name (see `FalconBackbone.presets`), a
                `kaggle://owner/model/framework/variation[/version]` handle
                (downloaded and cached by kagglehub), an
                `hf://org/name[@revision]` handle (huggingface_hub), a local
                directory in keras-hub's preset format (config.json,
                model.weights.h5), or a local Hugging Face Falcon checkpoint.
            load_weights: False gives freshly initialized weights.
            **kwargs: override config fields, e.g. `dtype="bfloat16"`.

        >>> from falcon_tf import FalconBackbone
        >>> model = FalconBackbone.from_preset("falcon_tiny_random")
        >>> model.num_layers
        2
        """
        from falcon_tf.checkpoints import loading

        return loading.load_backbone(cls, preset, load_weights=load_weights, **kwargs)

    def save_to_preset(self, preset_dir):
        """Writes config.json, metadata.json and model.weights.h5 in keras-hub's
        format, so keras-hub's `FalconBackbone.from_preset(preset_dir)` loads it."""
        from falcon_tf.checkpoints import loading

        loading.save_backbone(self, preset_dir)
