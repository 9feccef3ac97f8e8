"""The dtype argument of the model: float policies, and Keras's quantized ones
per layer through a DTypePolicyMap (what a quantized model's config holds)."""

from falcon_tf._keras import keras
from falcon_tf.model.config import DTYPE_NAMES

# Keras's quantized policies a layer of ours may carry (see `quantize`).
QUANTIZATION_MODES = ("int8", "int4", "float8")
_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy", "QuantizedDTypePolicy",
                   "QuantizedFloat8DTypePolicy", "Int4DTypePolicy")


def _float_policy(dtype):
    if isinstance(dtype, keras.DTypePolicy):
        name = dtype.name
    elif isinstance(dtype, dict) and dtype.get("class_name") in ("DTypePolicy",
                                                                  "FloatDTypePolicy"):
        name = (dtype.get("config") or {}).get("name")
    else:
        name = dtype
    if name not in DTYPE_NAMES:
        raise ValueError(f"`dtype` must be one of {', '.join(DTYPE_NAMES)}, a "
                         f"keras.DTypePolicy with one of those names, or a DTypePolicyMap "
                         f"over one; received {dtype!r}.")
    return keras.DTypePolicy(name)


def _layer_policy(entry, path, default):
    """One entry of a DTypePolicyMap -> a policy of ours or a Keras quantized one
    over ours (int8, int4 or float8), or ValueError naming the entry. A
    serialized quantized entry without a source (keras-hub writes
    `source_name: null`) quantizes from the map's `default` policy."""
    if isinstance(entry, dict) and entry.get("class_name") not in _POLICY_CLASSES:
        raise ValueError(f"`dtype` map entry {path!r}: {entry.get('class_name')!r} is not a "
                         f"dtype policy this model takes.")
    if isinstance(entry, dict) and isinstance(entry.get("config"), dict) \
            and "source_name" in entry["config"] and entry["config"]["source_name"] is None:
        entry = {**entry, "config": {**entry["config"], "source_name": default.name}}
    try:
        policy = keras.dtype_policies.get(entry) if isinstance(entry, (str, dict)) else entry
    except (ValueError, TypeError) as err:
        raise ValueError(f"`dtype` map entry {path!r}: {err}") from None
    if not isinstance(policy, keras.DTypePolicy) or isinstance(
            policy, keras.dtype_policies.DTypePolicyMap):
        raise ValueError(f"`dtype` map entry {path!r} must be a dtype policy; received {entry!r}.")
    mode = policy.quantization_mode
    if mode is None:
        return _float_policy(policy)
    source = policy.name.rsplit("_from_", 1)[-1]
    if mode not in QUANTIZATION_MODES or source not in DTYPE_NAMES:
        raise ValueError(f"`dtype` map entry {path!r}: {policy.name!r} is not one of "
                         f"{', '.join(QUANTIZATION_MODES)} from {', '.join(DTYPE_NAMES)}.")
    return policy


def resolve_dtype(dtype):
    """`dtype` argument -> keras.DTypePolicy (or DTypePolicyMap), or ValueError
    naming the argument.

    Takes None (Keras's global policy), a name from DTYPE_NAMES, a DTypePolicy,
    the dict keras-hub writes into config.json for one, or a
    `keras.dtype_policies.DTypePolicyMap` (or its config) mapping layer paths
    to quantized policies, as a quantized model's config holds. A map is
    copied: quantizing the model changes its own map, not the caller's.
    """
    if dtype is None:
        return keras.config.dtype_policy()
    DTypePolicyMap = keras.dtype_policies.DTypePolicyMap
    if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicyMap":
        config = dtype.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("policy_map", {}), dict):
            raise ValueError("`dtype` DTypePolicyMap config must hold `default_policy` and a "
                             "`policy_map` object.")
        default, entries = config.get("default_policy"), config.get("policy_map") or {}
    elif isinstance(dtype, DTypePolicyMap):
        default, entries = dtype.default_policy, {k: dtype[k] for k in dtype}
    else:
        return _float_policy(dtype)
    default = _float_policy(default if default is not None else keras.config.dtype_policy())
    return DTypePolicyMap(default, {path: _layer_policy(entry, path, default)
                                    for path, entry in entries.items()})


def own_policy(layer):
    """A layer's policy, looked up in its map when it has one."""
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return policy[layer.path]
    return policy
