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

    def _project(self, x, position):
        """(b, s, hidden) -> query (b, s, n, d), key and value (b, s, kv, d), rotated."""
        n, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        qkv = self.query_key_value(x)  # (b, s, (n + 2 kv) d)
        query = ops.reshape(qkv[..., : n * d], (batch, seq, n, d))
        key = ops.reshape(qkv[..., n * d:(n + kv) * d], (batch, seq, kv, d))
        value = ops.reshape(qkv[..., (n + kv) * d:], (batch, seq, kv, d))
        query, key = self._rotate(query, key, position)
        return query, key, value

    def _attend(self, query, key, value, mask_bias, position, keep=None, training=None):
        """query (b, q, n, d) over key and value (b, k, kv, d) -> (b, q, hidden)."""
        # Keys keep their rows of d (a transposed matmul, not a (b, kv, d, k)
        # copy): moving whole rows is what a cache of many slots can afford.
        key = ops.transpose(key, (0, 2, 1, 3))  # (b, kv, k, d)
        value = ops.transpose(value, (0, 2, 1, 3))  # (b, kv, k, d)
        return self._attend_heads(query, key, value, mask_bias, position, keep, training)

    def _attend_heads(self, query, key, value, mask_bias, position, keep=None, training=None):
        """query (b, q, n, d) over key and value (b, kv, k, d) -> (b, q, hidden).

        Keys and values arrive head-major, as the caches hold them, so a
        cached step moves no cache: only the query and the output turn.
        """
        # No tensor here has more than 4 dimensions: the LiteRT GPU delegate
        # rejects 5-D ones. Query head j = h * g + i (h its key/value head), so
        # (b, n, q, d) and (b, kv, g * q, d) share one memory order, and grouped
        # attention is a 4-D batched matmul over the kv heads.
        n, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        batch, seq, keys = ops.shape(query)[0], ops.shape(query)[1], ops.shape(key)[2]
        # Scaling the query scales the logits; an ALiBi bias arrives pre-scaled.
        query = query * ops.cast(1.0 / math.sqrt(d), query.dtype)
        query = ops.reshape(ops.transpose(query, (0, 2, 1, 3)), (batch, kv, -1, d))  # (b, kv, g q, d)
        logits = tf.matmul(query, key, transpose_b=True)  # (b, kv, g q, k)
        logits = ops.reshape(logits, (batch, n, seq, keys))  # (b, n, q, k)
        logits = self._bias(ops.cast(logits, "float32"), position) + mask_bias
        probs = tf.nn.softmax(logits, axis=-1)  # float32 whatever the policy
        if keep is not None:
            probs = probs * keep
        probs = self.dropout(probs, training=training)
        probs = ops.reshape(ops.cast(probs, self.compute_dtype), (batch, kv, -1, keys))
        out = ops.reshape(ops.matmul(probs, value), (batch, n, seq, d))  # (b, n, q, d)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, seq, self.hidden_dim))
        return self.output_dense(out)

    def call(self, x, mask_bias, keep, position, training=None):
        query, key, value = self._project(x, position)
        return self._attend(query, key, value, mask_bias, position, keep, training=training)

    def call_cached(self, x, cache_key, cache_value, mask_bias, position, write, window=None):
        """Attention of new tokens over a fixed-size key/value cache.

        x: (b, L, hidden), the new tokens. cache_key, cache_value:
        (b, kv, C, d), head-major, so attention reads them as they lie (no
        whole-cache transpose per layer per step). mask_bias: (b, 1, L, C), 0
        where a new token may attend a cache slot. position: rotary angles of
        the new tokens (b, L, 2, d), or the ALiBi bias of every slot
        (1, n, 1, C). write(cache, new) puts the new keys (values), given as
        (b, kv, L, d), into their slots. window: None, or attend only the
        first `window` slots (a static int; mask_bias and an ALiBi position
        then cover those slots only). Returns (out, cache_key, cache_value),
        the caches holding the new tokens.
        """
        query, key, value = self._project(x, position)
        # Only the new rows turn head-major: L rows, not the cache's C.
        key = ops.transpose(key, (0, 2, 1, 3))  # (b, kv, L, d)
        value = ops.transpose(value, (0, 2, 1, 3))
        cache_key = write(cache_key, ops.cast(key, cache_key.dtype))
        cache_value = write(cache_value, ops.cast(value, cache_value.dtype))
        keys, values = (cache_key, cache_value) if window is None else (
            cache_key[:, :, :window], cache_value[:, :, :window])
        out = self._attend_heads(query, ops.cast(keys, query.dtype),
                                 ops.cast(values, query.dtype), mask_bias, position)
        return out, cache_key, cache_value

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
