"""Hugging Face Falcon checkpoint -> falcon_tf preset directory.

    falcon-tf convert hf://tiiuae/falcon-rw-1b presets/falcon_rw_1b
    falcon-tf convert /path/to/hf_checkpoint presets/mine

The preset holds config.json, metadata.json and model.weights.h5 in keras-hub's
layout (keras-hub itself loads the Falcon-RW ones), plus the checkpoint's
tokenizer files under tokenizer/. Tensors stream one at a time from the
checkpoint into the HDF5 file and keep their dtype (bfloat16 stays bfloat16), so
memory stays near one tensor beyond the interpreter's own.
"""

import os

from falcon_tf.checkpoints import huggingface, keras_hub
from falcon_tf.progress import progress_bar
from falcon_tf.model.config import FalconConfig
from falcon_tf.untrusted import path_inside


def convert_checkpoint(source, preset_dir):
    """Converts `source` (an hf:// handle or a local HF checkpoint directory).

    Returns the preset directory. The write is atomic: on any error nothing
    is left at `preset_dir`.
    """
    source = os.fspath(source)
    directory = huggingface.download(source) if source.startswith("hf://") else source
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Checkpoint directory not found: {directory}")
    kwargs, layout = huggingface.read_hf_config(directory)
    config = FalconConfig(**kwargs)
    config_dict = {
        "name": "falcon_backbone",
        "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy",
                  "config": {"name": "float32"}, "registered_name": None},
        **config.to_dict(),
    }
    # Copied into the new preset, so each must be the checkpoint's own file.
    tokenizer = {f"tokenizer/{name}": path_inside(directory, name, directory)
                 for name in huggingface.TOKENIZER_FILES
                 if os.path.isfile(os.path.join(directory, name))}
    with progress_bar(f"Converting {os.path.basename(os.path.normpath(directory))}") \
            as progress:
        weights = huggingface.iter_weights(directory, config, layout, progress)
        metadata = ({"lm_head": huggingface.UNTIED_HEAD_NOTE}
                    if huggingface.has_untied_head(directory) else None)
        return keras_hub.write_preset(preset_dir, config_dict, config, weights, tokenizer,
                                      metadata)
