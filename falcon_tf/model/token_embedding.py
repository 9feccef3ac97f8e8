"""Token embedding whose lookup exports as a 1-D GATHER."""

from falcon_tf._keras import keras, tf

ops = keras.ops


class FalconTokenEmbedding(keras.layers.ReversibleEmbedding):
    """`keras.layers.ReversibleEmbedding` (tied weights), looked up on flat ids.

    A lookup with (batch, seq) indices becomes a GATHER with 2-D indices, which
    the LiteRT GPU delegate rejects; flattening first makes it 1-D. Call with
    `reverse=True` to project hidden states back onto the vocabulary (the
    tied LM head).
    """

    def call(self, inputs, reverse=False):
        if reverse:
            return super().call(inputs, reverse=True)
        flat = ops.reshape(ops.cast(inputs, "int32"), (-1,))
        # tf.gather, not ops.take: take adds a LESS/SELECT for negative ids.
        rows = tf.gather(self.embeddings, flat)  # (b * s, hidden)
        batch, seq = ops.shape(inputs)[0], ops.shape(inputs)[1]
        return ops.cast(ops.reshape(rows, (batch, seq, self.output_dim)), self.compute_dtype)

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras quantizes only the exact classes it knows; this subclass changes
        # nothing Keras's quantized lookup depends on (a quantized layer runs
        # Keras's own lookup and head, not `call` above).
        return super().quantize(mode, type_check=False, config=config)
