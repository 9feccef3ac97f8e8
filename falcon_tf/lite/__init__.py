"""The exported .tflite behind the same `from_preset` call as the Keras model.

    from falcon_tf.lite import FalconBackbone
    model = FalconBackbone.from_preset("artifacts/falcon_tiny_random", variant="int8")
    model({"token_ids": ids, "padding_mask": mask})   # numpy (batch, seq, hidden)

Needs numpy and a TFLite runtime (ai-edge-litert or tflite-runtime) only: no
TensorFlow, no Keras, which is what an edge device has.
"""

from falcon_tf._lazy import lazy_getattr

_LAZY = {"FalconBackbone": "falcon_tf.lite.backbone",
         "FalconCausalLM": "falcon_tf.lite.causal_lm"}
__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
