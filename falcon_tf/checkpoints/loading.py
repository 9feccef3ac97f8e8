"""`FalconBackbone.from_preset` and `save_to_preset`: a checkpoint of any
format (`handles.resolve`) into a model, and a model into a preset."""

from __future__ import annotations

import os

from falcon_tf.checkpoints import presets as _presets
from falcon_tf.checkpoints import huggingface
from falcon_tf.checkpoints import keras_hub_quantized as quantized_io
from falcon_tf.checkpoints.handles import CONFIG_FILE, WEIGHTS_FILE, resolve
from falcon_tf.checkpoints.keras_hub import (assign_weights, inspect_weights, iter_weights,
                                             named_variables, random_weights, read_config,
                                             verify_preset_files, write_preset)
from falcon_tf.model.config import FalconConfig
from falcon_tf.progress import progress_bar

def load_backbone(cls, preset, load_weights=True, **overrides):
    """A `cls` (FalconBackbone) built from `preset`'s config and weights."""
    builtin = _presets.BACKBONE_PRESETS.get(preset) if isinstance(preset, str) else None
    if builtin is not None and not load_weights:
        # A builtin preset's config is known: fresh weights need no download.
        return cls(**{**builtin["config"], "dtype": None, **overrides})
    checkpoint = resolve(preset)
    kind, found = checkpoint.kind, checkpoint.location
    if kind == "random":
        config = dict(found["config"])
    elif kind == "hf":
        config, layout = huggingface.read_hf_config(found)
    inspected = None
    quantized = False
    if kind == "dir":
        verify_preset_files(found, skip=() if load_weights else (WEIGHTS_FILE,))
        config = read_config(found)
        quantized = quantized_io.is_quantized_config(config)
        if quantized:
            quantized = quantized_io.check_quantized_preset(found, overrides)
            if quantized == "keras_hub":  # keras-hub's q/k/v entries -> our fused one
                try:
                    config["dtype"] = quantized_io.keras_hub_policy_map(config["dtype"], fuse=True)
                except ValueError as err:
                    raise ValueError(f"{os.path.join(found, CONFIG_FILE)}: field "
                                     f"`config.dtype`: {err}") from None
        elif load_weights:  # the weights file must fit the config before anything is built
            fields = {k: config[k] for k in FalconConfig.field_names() if k in config}
            overridden = {k: v for k, v in overrides.items() if k in fields}
            inspected = inspect_weights(os.path.join(found, WEIGHTS_FILE),
                                        FalconConfig(**{**fields, **overridden}))
    # As keras-hub does: a saved float dtype is not restored; the model takes
    # Keras's current default policy unless the caller passes `dtype`. A
    # quantized preset keeps the policies its weights were saved with.
    if not quantized:
        config["dtype"] = None
    config.update(overrides)
    try:
        model = cls(**config)
    except BaseException:
        if inspected is not None:
            inspected[0].close()
        raise
    # A checkpoint fact that travels with the model: FalconCausalLM (and so every
    # causal-LM export) refuses to tie a head the checkpoint did not tie.
    model.untied_lm_head = checkpoint.untied_head
    if not load_weights:
        return model
    if kind == "random":
        assign_weights(model, random_weights(model, found["random_seed"]), f"preset {preset!r}")
    elif kind == "hf":
        with progress_bar(f"Loading {os.path.basename(os.path.normpath(found))}") as progress:
            weights = huggingface.iter_weights(found, model.falcon_config, layout, progress)
            assign_weights(model, weights, found)
    elif quantized == "keras_hub":
        quantized_io.load_keras_hub_quantized(model, os.path.join(found, WEIGHTS_FILE))
    elif quantized:
        quantized_io.load_quantized_weights(model, os.path.join(found, WEIGHTS_FILE))
    else:
        path = os.path.join(found, WEIGHTS_FILE)
        assign_weights(model, iter_weights(path, model.falcon_config, inspected), path)
    return model


def save_backbone(model, preset_dir):
    """`model` as a preset in keras-hub's format (see `keras_hub_quantized` for a
    quantized one)."""
    metadata = ({"lm_head": huggingface.UNTIED_HEAD_NOTE}
                if getattr(model, "untied_lm_head", None) else {})
    if model.quantization_modes:
        # keras-hub's layout wherever keras-hub has the architecture, so that its
        # from_preset loads the quantized model too; falcon_tf's own otherwise.
        metadata["quantization"] = model.quantization_modes
        config = model.get_config()
        if model.falcon_config.is_keras_hub_architecture:
            config["dtype"] = quantized_io.keras_hub_policy_map(config["dtype"], fuse=False)
            writer = quantized_io.write_keras_hub_quantized
        else:
            writer = quantized_io.write_quantized_weights
        return write_preset(preset_dir, config, model.falcon_config, None, metadata=metadata,
                            weights_writer=lambda path: writer(path, model),
                            keras_hub_layout=writer is quantized_io.write_keras_hub_quantized)
    weights = ((name, var.numpy()) for name, var in named_variables(model).items())
    return write_preset(preset_dir, model.get_config(), model.falcon_config, weights,
                        metadata=metadata or None)
