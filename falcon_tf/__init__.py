"""falcon-tf: the Falcon language model in Keras 3 on TensorFlow.

`import falcon_tf` is light: the Keras model (and TensorFlow) load only when
first used, so the runtime namespaces can live without them.

    from falcon_tf import FalconBackbone
    model = FalconBackbone.from_preset("falcon_tiny_random")
"""

from falcon_tf import _moved
from falcon_tf._lazy import lazy_getattr

_moved.install()  # paths that earlier files and code name: falcon_tf.backbone, ...

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "FalconBackbone": "falcon_tf.model.backbone",
    "FalconCausalLM": "falcon_tf.model.causal_lm",
    "FalconCausalLMPreprocessor": "falcon_tf.text.causal_lm_preprocessor",
    "FalconConfig": "falcon_tf.model.config",
    "FalconTokenizer": "falcon_tf.text.tokenizer",
}

__all__ = sorted(_LAZY) + ["__version__"]
__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__():
    return __all__
