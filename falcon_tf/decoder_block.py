"""One Falcon-RW decoder block: sequential attention then MLP, pre-LayerNorm."""

from falcon_tf._keras import keras
from falcon_tf.attention import FalconAttention


class FalconDecoderBlock(keras.layers.Layer):
    """x + attention(LN(x)), then x + MLP(LN(x)) with an exact-GELU MLP.

    Every argument is explicit and used: `layer_norm_epsilon` reaches both
    LayerNorms, each dropout rate its own dropout. LayerNorm computes in
    float32 under any dtype policy (keras.ops.layer_normalization does).
    """

    def __init__(self, hidden_dim, num_attention_heads, intermediate_dim,
                 layer_norm_epsilon, attention_dropout_rate,
                 feedforward_dropout_rate, **kwargs):
        # The float32 attention bias must not be cast to a 16-bit compute dtype.
        super().__init__(autocast=False, **kwargs)
        self.hidden_dim = hidden_dim
        self.num_attention_heads = num_attention_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention_dropout_rate = attention_dropout_rate
        self.feedforward_dropout_rate = feedforward_dropout_rate
        policy = self.dtype_policy
        self.input_layernorm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="input_layernorm")
        self.attention = FalconAttention(
            hidden_dim, num_attention_heads, attention_dropout_rate,
            dtype=policy, name="attention")
        self.post_attention_layernorm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="post_attention_layernorm")
        self.dense_h_to_4h = keras.layers.Dense(
            intermediate_dim, activation="gelu",  # exact (erf) GELU: keras default approximate=False
            dtype=policy, name="dense_h_to_4h")
        self.dense_4h_to_h = keras.layers.Dense(hidden_dim, dtype=policy, name="dense_4h_to_h")
        self.feedforward_dropout = keras.layers.Dropout(
            feedforward_dropout_rate, dtype=policy, name="feedforward_dropout")

    def build(self, input_shape):
        self.input_layernorm.build(input_shape)
        self.attention.build(input_shape)
        self.post_attention_layernorm.build(input_shape)
        self.dense_h_to_4h.build(input_shape)
        self.dense_4h_to_h.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def call(self, x, alibi, mask_bias, keep, training=None):
        h = self.attention(self.input_layernorm(x), alibi, mask_bias, keep, training=training)
        x = x + h
        h = self.dense_4h_to_h(self.dense_h_to_4h(self.post_attention_layernorm(x)))
        return x + self.feedforward_dropout(h, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_dim": self.hidden_dim,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_dim": self.intermediate_dim,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "attention_dropout_rate": self.attention_dropout_rate,
            "feedforward_dropout_rate": self.feedforward_dropout_rate,
        })
        return config
