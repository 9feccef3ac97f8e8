"""Module paths from before the model, text, artifact and runtime modules
moved into their folders, kept importable for code that imports them
(`from falcon_tf.samplers import Sampler`, `falcon_tf.backbone`, ...). An
old path is the moved module itself, the same object, imported on first use.

Files need none of this: Keras finds a `.keras` file's classes by their
registered names (`falcon_tf>FalconBackbone`, ...), which did not change,
and the presets' config.json is read as data.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# old module -> where it lives now
MOVED = {f"falcon_tf.{name}": f"falcon_tf.{folder}.{name}"
         for folder, names in {
             "model": ("config", "dtype_policy", "token_embedding", "attention_bias",
                       "attention", "decoder_block", "backbone", "causal_lm"),
             "text": ("bpe", "tokenizer", "causal_lm_preprocessor"),
             "checkpoints": ("presets",),
             "artifacts": ("contract", "manifest"),
             "runtime": ("generation", "samplers", "inputs", "evaluation"),
         }.items() for name in names}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def __init__(self):
        self._specs = {}

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # Importing stamped the old path's spec on the module: give it back its own.
        module.__spec__ = self._specs[module.__name__]


def install():
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
