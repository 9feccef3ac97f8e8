"""falcon-tf: the Falcon language model in Keras 3 on TensorFlow.

`import falcon_tf` is light: the Keras model (and TensorFlow) load only when
first used, so the runtime namespaces can live without them.

    from falcon_tf import FalconBackbone
    model = FalconBackbone.from_preset("falcon_tiny_random")
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "FalconBackbone": "falcon_tf.backbone",
    "FalconConfig": "falcon_tf.config",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'falcon_tf' has no attribute {name!r}")


def __dir__():
    return __all__
