"""The exported SavedModel behind the same `from_preset` call as the Keras model.

    from falcon_tf.serving import FalconBackbone
    model = FalconBackbone.from_preset("artifacts/falcon_tiny_random")
    model({"token_ids": ids, "padding_mask": mask})   # numpy (batch, seq, hidden)

    from falcon_tf.serving import FalconCausalLM
    FalconCausalLM.from_preset("artifacts/falcon_tiny_random").generate("Hello", max_length=32)

Needs TensorFlow only: no Keras and none of the model code runs the graph.
"""

from falcon_tf._lazy import lazy_getattr

_LAZY = {"FalconBackbone": "falcon_tf.serving.backbone",
         "FalconCausalLM": "falcon_tf.serving.causal_lm"}
__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
