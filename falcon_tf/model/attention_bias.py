"""Positions (ALiBi bias or rotary angles) and the causal + padding mask, once per forward.

Every op here is chosen to export: positions come from a float matmul with a
triangular matrix instead of an int32 CUMSUM (which the LiteRT GPU delegate
rejects), and the triangle is built from iotas so no (seq, seq) constant is
baked into the graph.
"""

import math

import numpy as np

from falcon_tf.artifacts import contract
from falcon_tf._keras import keras

ops = keras.ops

# Added to the logits of masked keys. Far enough down that exp() underflows to
# exactly 0 in float32, as keras.layers.Softmax's -1e9 does, and still finite in
# float16, where the LiteRT GPU delegate computes: -1e9 becomes -inf there and a
# row with every key masked turns to NaN. Such rows are zeroed by `keep`, as
# keras.layers.Softmax zeroes them.
MASKED_LOGIT = contract.MASK_VALUE


def alibi_slopes(num_heads):
    """The per-head ALiBi slopes of Press et al. (2022), as float32 numpy.

    With n a power of two the slopes are 2^(-8/n), 2^(-16/n), ... For other n,
    the first m = 2^floor(log2 n) come from that series for m, and the rest are
    the odd terms of the series for 2m.
    """
    def geometric(n):
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    m = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(m) + geometric(2 * m)[0::2][: num_heads - m]
    return np.asarray(slopes, dtype="float32")


def causal_cache_mask(positions, cache_length):
    """(b, L) slot of each new token -> (b, 1, L, cache_length) additive mask:
    0 for slots at or before the token's own, MASKED_LOGIT after it."""
    slots = ops.arange(cache_length, dtype="int32")
    allowed = ops.less_equal(slots[None, None, None, :], positions[:, None, :, None])
    return (1.0 - ops.cast(allowed, "float32")) * MASKED_LOGIT


class FalconAttentionBias(keras.layers.Layer):
    """Turns a padding mask into what every attention layer needs, once per forward.

    Call with `padding_mask` (batch, seq), 1 for tokens and 0 for padding.
    Returns `(mask_bias, keep, position)`, all float32:
      mask_bias: (batch, 1, seq, seq) 0 where a query may attend a key,
        MASKED_LOGIT where it may not (a future key or a padding key).
      keep: (batch, 1, seq, seq) 1.0 where attention is allowed, else 0.0.
      position: with ALiBi, (batch, heads, 1, seq): slope * position of each
        key, already multiplied by 1/sqrt(head_dim) (Falcon scales bias and
        logits together). With rotary, (batch, seq, 2, head_dim): the cos and
        sin of each token's rotation angles.
    A token's position counts only the real tokens before it, so a left-padded
    row sees the same positions as an unpadded one.

    It takes the model's dtype policy like every layer, and computes in float32
    whatever that policy is.
    """

    def __init__(self, num_heads, head_dim, position_embedding="alibi", rope_theta=10000.0,
                 **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.position_embedding = position_embedding
        self.rope_theta = rope_theta
        if position_embedding == "alibi":
            self._scaled_slopes = alibi_slopes(num_heads) / np.float32(math.sqrt(head_dim))
            self._position = self._alibi
        else:
            exponents = np.arange(0, head_dim, 2, dtype="float64") / head_dim
            self._inverse_frequency = (1.0 / rope_theta ** exponents).astype("float32")
            self._position = self._rotary

    def _alibi(self, position):
        slopes = ops.convert_to_tensor(self._scaled_slopes)  # (n,)
        return slopes[None, :, None, None] * position[:, None, None, :]  # (b, n, 1, s)

    def _rotary(self, position):
        angles = position[:, :, None] * ops.convert_to_tensor(self._inverse_frequency)  # (b, s, d/2)
        angles = ops.concatenate([angles, angles], axis=-1)  # (b, s, d): halves rotate together
        return ops.stack([ops.cos(angles), ops.sin(angles)], axis=2)  # (b, s, 2, d)

    def call(self, padding_mask):
        mask = ops.cast(padding_mask, "float32")  # (b, s)
        seq = ops.shape(mask)[1]
        index = ops.arange(seq, dtype="int32")
        # lower[k, q] = 1 if k <= q; (b, s) @ lower counts real tokens up to q.
        lower = ops.cast(ops.less_equal(index[:, None], index[None, :]), "float32")
        position = (ops.matmul(mask, lower) - 1.0) * mask  # (b, s)
        causal = ops.transpose(lower)  # causal[q, k] = 1 if k <= q
        keep = causal[None, None, :, :] * mask[:, None, None, :]
        mask_bias = (1.0 - keep) * MASKED_LOGIT
        return mask_bias, keep, self._position(position)

    def cached_position(self, positions, cache_length):
        """What attention needs with a cache: for rotary, the angles of the new
        tokens at `positions` (b, L) -> (b, L, 2, head_dim); for ALiBi, the bias
        of every cache slot (1, heads, 1, cache_length), a slot's position being
        its index. Softmax ignores a shift shared by a query's keys, so slot
        indices give the same attention as positions counted from a row's
        first real token, for ALiBi (bias linear in the key) and rotary
        (angles of q and k differ by their distance) alike.
        """
        if self.position_embedding == "alibi":
            return self._alibi(ops.cast(ops.arange(cache_length), "float32")[None, :])
        return self._rotary(ops.cast(positions, "float32"))

    def compute_output_spec(self, padding_mask):
        batch, seq = padding_mask.shape
        if self.position_embedding == "alibi":
            position = (batch, self.num_heads, 1, seq)
        else:
            position = (batch, seq, 2, self.head_dim)
        return (
            keras.KerasTensor((batch, 1, seq, seq), dtype="float32"),
            keras.KerasTensor((batch, 1, seq, seq), dtype="float32"),
            keras.KerasTensor(position, dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "head_dim": self.head_dim,
                       "position_embedding": self.position_embedding,
                       "rope_theta": self.rope_theta})
        return config
