"""Falcon decoder blocks: the sequential one (Falcon-RW) and the parallel one (7B/40B/180B).

The backbone picks the class once, from the config. Layer names follow the
Hugging Face checkpoints' tensor names (input_layernorm, ln_attn, ln_mlp,
dense_h_to_4h ...), so conversion needs no guesswork.
"""

from falcon_tf._keras import keras
from falcon_tf.model.attention import FalconAttention


class _FalconBlockBase(keras.layers.Layer):
    """Attention, the exact-GELU MLP and the dropouts every Falcon block has.

    LayerNorm computes in float32 under any dtype policy
    (keras.ops.layer_normalization does).
    """

    layer_norm_names = ()  # set by each subclass

    def __init__(self, config, **kwargs):
        # The float32 attention bias must not be cast to a 16-bit compute dtype.
        super().__init__(autocast=False, **kwargs)
        self.falcon_config = config
        policy = self.dtype_policy
        for name in self.layer_norm_names:
            setattr(self, name, keras.layers.LayerNormalization(
                epsilon=config.layer_norm_epsilon, dtype=policy, name=name))
        self.attention = FalconAttention(
            config.hidden_dim, config.num_attention_heads, config.kv_heads,
            config.position_embedding, config.use_bias, config.attention_dropout_rate,
            dtype=policy, name="attention")
        self.dense_h_to_4h = keras.layers.Dense(
            config.intermediate_dim, activation="gelu",  # exact (erf): keras' default
            use_bias=config.use_bias, dtype=policy, name="dense_h_to_4h")
        self.dense_4h_to_h = keras.layers.Dense(
            config.hidden_dim, use_bias=config.use_bias, dtype=policy, name="dense_4h_to_h")
        self.feedforward_dropout = keras.layers.Dropout(
            config.feedforward_dropout_rate, dtype=policy, name="feedforward_dropout")

    def build(self, input_shape):
        for name in self.layer_norm_names:
            getattr(self, name).build(input_shape)
        self.attention.build(input_shape)
        self.dense_h_to_4h.build(input_shape)
        self.dense_4h_to_h.build(tuple(input_shape[:-1]) + (self.falcon_config.intermediate_dim,))

    def mlp(self, x):
        return self.dense_4h_to_h(self.dense_h_to_4h(x))

    def call(self, x, mask_bias, keep, position, training=None):
        return self.combine(
            x, lambda h: self.attention(h, mask_bias, keep, position, training=training),
            training=training)

    def call_cached(self, x, cache_key, cache_value, mask_bias, position, write, window=None):
        """The block over new tokens `x` with a key/value cache (see
        `FalconAttention.call_cached`). Returns (x, cache_key, cache_value)."""
        caches = []

        def attend(h):
            out, *new = self.attention.call_cached(h, cache_key, cache_value, mask_bias,
                                                   position, write, window)
            caches.extend(new)
            return out

        x = self.combine(x, attend, training=False)
        return x, caches[0], caches[1]

    def compute_output_shape(self, input_shape):
        return input_shape


class FalconDecoderBlock(_FalconBlockBase):
    """Falcon-RW: x + attention(LN(x)), then x + MLP(LN(x))."""

    layer_norm_names = ("input_layernorm", "post_attention_layernorm")

    def combine(self, x, attend, training=None):
        x = x + attend(self.input_layernorm(x))
        h = self.mlp(self.post_attention_layernorm(x))
        return x + self.feedforward_dropout(h, training=training)


class FalconParallelDecoderBlock(_FalconBlockBase):
    """Falcon-7B: x + attention(LN(x)) + MLP(LN(x)), one shared LayerNorm."""

    layer_norm_names = ("input_layernorm",)

    def combine(self, x, attend, training=None):
        h = self.input_layernorm(x)
        attention = attend(h)
        return x + self.feedforward_dropout(attention + self.mlp(h), training=training)


class FalconParallelDecoderBlockSeparateNorms(_FalconBlockBase):
    """Falcon-40B/180B ("new decoder architecture"): x + attention(LN_a(x)) + MLP(LN_m(x))."""

    layer_norm_names = ("ln_attn", "ln_mlp")

    def combine(self, x, attend, training=None):
        attention = attend(self.ln_attn(x))
        mlp = self.mlp(self.ln_mlp(x))
        return x + self.feedforward_dropout(attention + mlp, training=training)


def block_class(config):
    """The block class a config calls for (its LayerNorms are `config.layer_norm_names`)."""
    for cls in (FalconDecoderBlock, FalconParallelDecoderBlock,
                FalconParallelDecoderBlockSeparateNorms):
        if cls.layer_norm_names == config.layer_norm_names:
            return cls
    raise AssertionError(f"no block for {config.layer_norm_names}")
