"""Where a checkpoint or an exported artifact is: handles to directories.

Two kinds of argument are resolved here, side by side because they look alike:
  - a *preset* (a builtin name, `kaggle://…`, `hf://…`, or a directory) names a
    checkpoint to build the Keras model from: `resolve` -> `Checkpoint`;
  - an *artifact* (a directory holding manifest.json, or a preset name looked up
    under $FALCON_TF_ARTIFACTS) names what an export wrote, for the runtimes:
    `resolve_artifact_dir`.
Light on purpose (no TensorFlow, Keras or h5py): the runtimes import it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from falcon_tf.artifacts import manifest
from falcon_tf.checkpoints import presets as _presets
from falcon_tf.checkpoints import huggingface

# The files that make a directory a preset in keras-hub's format.
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
# Where builtin presets with real weights ship inside the package.
EMBEDDED_FOLDER = "preset_files"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Checkpoint(NamedTuple):
    """What a preset argument resolves to, and the facts that travel with it."""

    kind: str  # "random" (a builtin preset of seeded random weights), "dir"
    #            (keras-hub's preset format, an embedded preset's included) or "hf"
    location: object  # the builtin entry for "random"; otherwise the directory
    preset: str  # the argument as passed

    @property
    def directory(self):
        """The checkpoint's directory; None for a builtin random preset."""
        return None if self.kind == "random" else self.location

    @property
    def source(self):
        """What to pass on to another `from_preset` for this checkpoint without
        resolving (downloading) it again."""
        return self.preset if self.kind == "random" else self.location

    @property
    def untied_head(self):
        """Why the checkpoint's LM head is not its token embedding (a Hugging
        Face config saying so, or a converted preset's metadata.json recording
        it), or None."""
        if self.kind == "hf":
            return huggingface.untied_head_reason(self.location)
        if self.kind == "dir":
            from falcon_tf.json_file import json_or_none

            path = os.path.join(self.location, METADATA_FILE)
            metadata = json_or_none(path)
            if isinstance(metadata, dict) and metadata.get("lm_head"):
                return f"{path}: `lm_head` is {metadata['lm_head']!r}"
        return None


def artifact_name(preset):
    """A short name for a preset argument: builtin name, directory, or handle
    ("kaggle://keras/falcon/keras/falcon_refinedweb_1b_en/2" -> "falcon_refinedweb_1b_en",
    "hf://tiiuae/falcon-7b@main" -> "falcon-7b")."""
    path = str(os.fspath(preset)).split("://", 1)[-1].split("@", 1)[0]
    parts = [p for p in path.split("/") if p and not p.isdigit()]
    return parts[-1] if parts else "preset"


def _local_dir_hint(preset):
    name = artifact_name(preset)
    return (f"To load a preset you already have on disk, pass its local directory "
            f"(holding {CONFIG_FILE} and {WEIGHTS_FILE}), e.g. "
            f"FalconBackbone.from_preset('/path/to/{name}').")


def download_kaggle(handle):
    """`kaggle://owner/model/framework/variation[/version]` -> local directory."""
    path = handle[len("kaggle://"):].strip("/")
    if len(path.split("/")) not in (4, 5) or "" in path.split("/"):
        raise ValueError(
            f"Invalid Kaggle handle {handle!r}: expected "
            f"kaggle://owner/model/framework/variation[/version]. {_local_dir_hint(handle)}")
    try:
        import kagglehub

        return kagglehub.model_download(path)
    except Exception as err:  # network, auth, unknown model: all end the same way
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"Could not download preset {handle!r} with kagglehub ({type(err).__name__}: "
            f"{reason}). {_local_dir_hint(handle)}") from None


def embedded_dir(entry):
    """The package directory holding a builtin preset shipped with the package."""
    path = os.path.join(_PACKAGE, EMBEDDED_FOLDER, entry["embedded_dir"])
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise FileNotFoundError(f"The embedded preset's files are missing: {path} (reinstall "
                                f"falcon-tf; `pip install -e .` keeps them in place).")
    return path


def resolve(preset):
    """A preset argument -> its `Checkpoint` (downloading a handle)."""
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(f"`preset` must be a string or path; received {preset!r}.")
    preset = name = os.fspath(preset)
    if preset in _presets.BACKBONE_PRESETS:
        entry = _presets.BACKBONE_PRESETS[preset]
        if "random_seed" in entry:
            return Checkpoint("random", entry, name)
        if "embedded_dir" in entry:
            return Checkpoint("dir", embedded_dir(entry), name)
        preset = entry.get("kaggle_handle") or entry["hf_handle"]
    if preset.startswith("kaggle://"):
        preset = download_kaggle(preset)
    elif preset.startswith("hf://"):
        preset = huggingface.download(preset)
    if os.path.isdir(preset):
        return Checkpoint("hf" if huggingface.is_hf_directory(preset) else "dir", preset, name)
    if os.path.exists(preset):
        raise ValueError(f"Preset {preset!r} is a file; pass the directory that holds "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE}.")
    raise ValueError(
        f"Unknown preset {preset!r}: not a builtin preset "
        f"({', '.join(sorted(_presets.BACKBONE_PRESETS))}), a kaggle:// or hf:// handle, or an "
        f"existing directory. {_local_dir_hint(preset)}")


def resolve_artifact_dir(preset, export_format):
    """An artifact directory, or a preset name looked up under $FALCON_TF_ARTIFACTS
    (default ./artifacts). `export_format` names the export to suggest when
    there is none."""
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(f"`preset` must be a string or path; received {preset!r}.")
    preset = os.fspath(preset)
    if os.path.isfile(os.path.join(preset, manifest.MANIFEST_FILE)):
        return preset
    root = os.environ.get("FALCON_TF_ARTIFACTS", "artifacts")
    candidate = os.path.join(root, preset)
    if os.path.isfile(os.path.join(candidate, manifest.MANIFEST_FILE)):
        return candidate
    raise FileNotFoundError(
        f"No exported artifacts for {preset!r}: neither {preset} nor {candidate} holds "
        f"{manifest.MANIFEST_FILE}. Export first with `falcon-tf export --preset {preset} "
        f"--format {export_format}`, then pass the artifact directory (artifacts/<preset>).")
