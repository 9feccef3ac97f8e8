"""The contract's signatures (`falcon_tf.contract`) as `tf.TensorSpec`s: every
exporter traces its functions with these, and records the same signatures in
the manifest, so the file and its manifest cannot disagree."""


def input_specs(signature):
    """[tf.TensorSpec] of `signature`'s inputs, in its order, named as in the contract."""
    import tensorflow as tf

    return [tf.TensorSpec(spec["shape"], spec["dtype"], name)
            for name, spec in signature["inputs"].items()]
