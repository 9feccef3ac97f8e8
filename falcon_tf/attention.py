"""Falcon self-attention: multi-head, multi-query or grouped-query; ALiBi or rotary."""

import math

from falcon_tf._keras import keras, tf

ops = keras.ops


def _rotate_half(x):
    half = x.shape[-1] // 2
    return ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _apply_rotary(query, key, position):
    """Rotary embedding. query (b, s, n, d), key (b, s, kv, d), position (b, s, 2, d)."""
    cos, sin = position[:, :, 0:1], position[:, :, 1:2]  # (b, s, 1, d)
    query = query * ops.cast(cos, query.dtype) + _rotate_half(query) * ops.cast(sin, query.dtype)
    key = key * ops.cast(cos, key.dtype) + _rotate_half(key) * ops.cast(sin, key.dtype)
    return query, key


def _add_alibi(logits, position):
    return logits + position  # (b, n, q, k) + (b, n, 1, k)


class FalconAttention(keras.layers.Layer):
    """Self-attention with one fused query/key/value projection.

    `num_kv_heads` key/value heads serve `num_heads` query heads in groups of
    `num_heads // num_kv_heads` (equal counts: multi-head; one: multi-query).
    The fused kernel is (hidden, (num_heads + 2 * num_kv_heads) * head_dim), its
    columns laid out [query heads | key heads | value heads]; query head j
    belongs to key/value head j // group.

    Call with `x` (batch, seq, hidden) and the outputs of
    `FalconAttentionBias`; returns (batch, seq, hidden).
    """

    def __init__(self, hidden_dim, num_heads, num_kv_heads, position_embedding, use_bias,
                 dropout_rate, **kwargs):
        # The float32 attention bias must not be cast to a 16-bit compute dtype.
        super().__init__(autocast=False, **kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = hidden_dim // num_heads
        self.position_embedding = position_embedding
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        # The variant is fixed here, once: ALiBi biases the logits, rotary turns q and k.
        if position_embedding == "rotary":
            self._rotate, self._bias = _apply_rotary, lambda logits, position: logits
        else:
            self._rotate, self._bias = (lambda q, k, position: (q, k)), _add_alibi
        self.query_key_value = keras.layers.Dense(
            (num_heads + 2 * num_kv_heads) * self.head_dim, use_bias=use_bias,
            dtype=self.dtype_policy, name="query_key_value")
        self.output_dense = keras.layers.Dense(
            hidden_dim, use_bias=use_bias, dtype=self.dtype_policy, name="output_dense")
        self.dropout = keras.layers.Dropout(
            dropout_rate, dtype=self.dtype_policy, name="attention_dropout")

    def build(self, input_shape):
        self.query_key_value.build(input_shape)
        self.output_dense.build(input_shape)

    def call(self, x, mask_bias, keep, position, training=None):
        # No tensor here has more than 4 dimensions: the LiteRT GPU delegate
        # rejects 5-D ones. Query head j = h * g + i (h its key/value head), so
        # (b, n, s, d) and (b, kv, g * s, d) share one memory order, and grouped
        # attention is a 4-D batched matmul over the kv heads.
        n, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        qkv = self.query_key_value(x)  # (b, s, (n + 2 kv) d)
        query = ops.reshape(qkv[..., : n * d], (batch, seq, n, d))
        key = ops.reshape(qkv[..., n * d:(n + kv) * d], (batch, seq, kv, d))
        value = ops.reshape(qkv[..., (n + kv) * d:], (batch, seq, kv, d))
        query, key = self._rotate(query, key, position)
        # Scaling the query scales the logits; an ALiBi bias arrives pre-scaled.
        query = query * ops.cast(1.0 / math.sqrt(d), query.dtype)
        query = ops.reshape(ops.transpose(query, (0, 2, 1, 3)), (batch, kv, -1, d))  # (b, kv, g s, d)
        key = ops.transpose(key, (0, 2, 3, 1))  # (b, kv, d, s)
        value = ops.transpose(value, (0, 2, 1, 3))  # (b, kv, s, d)
        logits = ops.reshape(ops.matmul(query, key), (batch, n, seq, seq))  # (b, n, q, k)
        logits = self._bias(ops.cast(logits, "float32"), position) + mask_bias
        probs = tf.nn.softmax(logits, axis=-1) * keep  # float32 whatever the policy
        probs = self.dropout(probs, training=training)
        probs = ops.reshape(ops.cast(probs, self.compute_dtype), (batch, kv, -1, seq))
        out = ops.reshape(ops.matmul(probs, value), (batch, n, seq, d))  # (b, n, s, d)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, seq, self.hidden_dim))
        return self.output_dense(out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "position_embedding": self.position_embedding,
            "use_bias": self.use_bias,
            "dropout_rate": self.dropout_rate,
        })
        return config
