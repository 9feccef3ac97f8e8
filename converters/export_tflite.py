"""Preset -> TFLite (LiteRT) FlatBuffer.

The graph is traced at fixed shapes (batch and sequence length are export
options) and its variables are frozen into constants before conversion:
converting a Keras 3 function that still reads resource variables yields a
file that keeps VAR_HANDLE/READ_VARIABLE ops, loads, and returns NaN. One
signature, `serving_default`, with inputs `token_ids` and `padding_mask`
(int32 [batch, seq]) and output `sequence_output` (float32 [batch, seq, hidden]).

This module holds the float32 conversion; quantized variants, the manifest
and the on-device loader build on it.
"""


def convert_fp32(model, batch=1, seq=128):
    """A FalconBackbone -> bytes of a float32 .tflite with its weights embedded."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    if not (isinstance(batch, int) and batch > 0 and isinstance(seq, int) and seq > 0):
        raise ValueError(f"`batch` and `seq` must be positive integers; received {batch}, {seq}.")
    spec = [tf.TensorSpec((batch, seq), tf.int32, "token_ids"),
            tf.TensorSpec((batch, seq), tf.int32, "padding_mask")]

    @tf.function(input_signature=spec)
    def forward(token_ids, padding_mask):
        return model({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)

    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())

    # Freezing drops the output's name; a wrapper over the constant-only graph
    # restores it, so the signature says `sequence_output`, not `output_0`.
    @tf.function(input_signature=spec)
    def serving_default(token_ids, padding_mask):
        out = frozen(token_ids=token_ids, padding_mask=padding_mask)
        return {"sequence_output": out[0] if isinstance(out, (list, tuple)) else out}

    module = tf.Module()
    module.serving_default = serving_default
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serving_default.get_concrete_function()], module)
    return converter.convert()
