"""Falcon-RW multi-head self-attention with ALiBi."""

import math

from falcon_tf._keras import keras, tf

ops = keras.ops


class FalconAttention(keras.layers.Layer):
    """Multi-head self-attention with one fused query/key/value projection.

    The fused kernel is (hidden, 3 * hidden), its columns laid out as
    [query heads | key heads | value heads], each head's `head_dim` columns
    contiguous. One matmul instead of three is faster on every backend.

    Call with `x` (batch, seq, hidden) and the outputs of
    `FalconAttentionBias`; returns (batch, seq, hidden).
    """

    def __init__(self, hidden_dim, num_heads, dropout_rate, **kwargs):
        # The float32 attention bias must not be cast to a 16-bit compute dtype.
        super().__init__(autocast=False, **kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.dropout_rate = dropout_rate
        self.query_key_value = keras.layers.Dense(
            3 * hidden_dim, dtype=self.dtype_policy, name="query_key_value"
        )
        self.output_dense = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="output_dense"
        )
        self.dropout = keras.layers.Dropout(
            dropout_rate, dtype=self.dtype_policy, name="attention_dropout"
        )

    def build(self, input_shape):
        self.query_key_value.build(input_shape)
        self.output_dense.build(input_shape)

    def call(self, x, alibi, mask_bias, keep, training=None):
        batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        qkv = self.query_key_value(x)  # (b, s, 3 * n * d)
        qkv = ops.reshape(qkv, (batch, seq, 3, self.num_heads, self.head_dim))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (b, s, n, d)
        # Scaling the query scales the logits; the bias arrives pre-scaled.
        query = query * ops.cast(1.0 / math.sqrt(self.head_dim), query.dtype)
        logits = ops.einsum("bqnd,bknd->bnqk", query, key)  # (b, n, q, k)
        logits = ops.cast(logits, "float32") + alibi + mask_bias
        probs = tf.nn.softmax(logits, axis=-1) * keep  # float32 whatever the policy
        probs = self.dropout(probs, training=training)
        probs = ops.cast(probs, self.compute_dtype)
        out = ops.einsum("bnqk,bknd->bqnd", probs, value)  # (b, s, n, d)
        out = ops.reshape(out, (batch, seq, self.hidden_dim))
        return self.output_dense(out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "dropout_rate": self.dropout_rate,
        })
        return config
