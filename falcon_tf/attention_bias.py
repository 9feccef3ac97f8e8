"""ALiBi position bias and the causal + padding mask, computed once per forward.

Every op here is chosen to export: positions come from a float matmul with a
triangular matrix instead of an int32 CUMSUM (which the LiteRT GPU delegate
rejects), and the triangle is built from iotas so no (seq, seq) constant is
baked into the graph.
"""

import math

import numpy as np

from falcon_tf._keras import keras

ops = keras.ops

# Added to the logits of masked keys. Equal to what keras.layers.Softmax uses,
# so rows with every key masked behave the same way (they come out as zeros).
MASKED_LOGIT = -1e9


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


class FalconAttentionBias(keras.layers.Layer):
    """Turns a padding mask into what every attention layer adds to its logits.

    Call with `padding_mask` (batch, seq), 1 for tokens and 0 for padding.
    Returns, all float32:
      alibi: (batch, heads, 1, seq) slope * position of each key, already
        multiplied by 1/sqrt(head_dim) (Falcon scales bias and logits together).
        A key's position counts only the real tokens before it, so a left-padded
        row sees the same positions as an unpadded one.
      mask_bias: (batch, 1, seq, seq) 0 where a query may attend a key,
        MASKED_LOGIT where it may not (a future key or a padding key).
      keep: (batch, 1, seq, seq) 1.0 where attention is allowed, else 0.0.
    """

    def __init__(self, num_heads, head_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self._scaled_slopes = alibi_slopes(num_heads) / np.float32(math.sqrt(head_dim))

    def call(self, padding_mask):
        mask = ops.cast(padding_mask, "float32")  # (b, s)
        seq = ops.shape(mask)[1]
        index = ops.arange(seq, dtype="int32")
        # lower[k, q] = 1 if k <= q; (b, s) @ lower counts real tokens up to q.
        lower = ops.cast(ops.less_equal(index[:, None], index[None, :]), "float32")
        position = (ops.matmul(mask, lower) - 1.0) * mask  # (b, s)
        slopes = ops.convert_to_tensor(self._scaled_slopes)  # (n,)
        alibi = slopes[None, :, None, None] * position[:, None, None, :]
        causal = ops.transpose(lower)  # causal[q, k] = 1 if k <= q
        keep = causal[None, None, :, :] * mask[:, None, None, :]
        mask_bias = (1.0 - keep) * MASKED_LOGIT
        return alibi, mask_bias, keep

    def compute_output_spec(self, padding_mask):
        batch, seq = padding_mask.shape
        return (
            keras.KerasTensor((batch, self.num_heads, 1, seq), dtype="float32"),
            keras.KerasTensor((batch, 1, seq, seq), dtype="float32"),
            keras.KerasTensor((batch, 1, seq, seq), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "head_dim": self.head_dim})
        return config
