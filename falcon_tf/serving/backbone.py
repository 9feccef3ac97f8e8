"""Server-side loader of an exported FalconBackbone SavedModel."""

import os

import numpy as np

from falcon_tf.runtime import inputs as _inputs
from falcon_tf.artifacts import contract, manifest
from falcon_tf.checkpoints import handles

SIGNATURES = (contract.BACKBONE_SIGNATURE, "serving_xla")


def load_version(preset, version=None, verify_checksums=True):
    """-> (artifact dir, manifest, loaded SavedModel, its path), the files of
    that version checked against the manifest's sha256 unless told not to."""
    artifact_dir = handles.resolve_artifact_dir(preset, "saved_model")
    data = manifest.read(artifact_dir)
    versions = (data.get("saved_model") or {}).get("versions") or {}
    if not versions:
        raise FileNotFoundError(f"{artifact_dir}: the manifest lists no SavedModel export.")
    if version is None:
        version = max(int(v) for v in versions)
    if str(version) not in versions:
        raise ValueError(f"`version` {version} is not exported in {artifact_dir}; "
                         f"available: {sorted(int(v) for v in versions)}.")
    files = manifest.field(data, f"saved_model.versions.{version}.files", "object", artifact_dir)
    for name in ("vocabulary_size", "hidden_dim"):
        manifest.field(data, f"config.{name}", "positive integer", artifact_dir)
    if verify_checksums:
        manifest.verify(artifact_dir, files)
    path = os.path.join(artifact_dir, "saved_model", str(version))
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
    except (tf.errors.OpError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Could not load the SavedModel in {path}: {reason}") from None
    return artifact_dir, data, loaded, path


class FalconBackbone:
    """An exported backbone, called like the Keras model; returns numpy.

    Built with `from_preset`. `signature` picks "serving_default" (a plain
    graph) or "serving_xla" (the XLA-compiled forward).
    """

    def __init__(self, loaded, signature, vocabulary_size, hidden_dim, path):
        self._loaded = loaded  # owns the variables the signature reads
        self._fn = loaded.signatures[signature]
        self.signature = signature
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.path = path

    @classmethod
    def from_preset(cls, preset, version=None, signature=contract.BACKBONE_SIGNATURE,
                    verify_checksums=True):
        """Loads `artifacts/<preset>/saved_model/<version>` (the latest by default).

        Checks every file of that version against the manifest's sha256 unless
        `verify_checksums=False`.
        """
        if signature not in SIGNATURES:
            raise ValueError(f"`signature` must be one of {SIGNATURES}; received {signature!r}.")
        artifact_dir, data, loaded, path = load_version(preset, version, verify_checksums)
        if signature not in loaded.signatures:
            raise ValueError(f"{path} has no signature {signature!r}; it has "
                             f"{sorted(loaded.signatures)}.")
        config = data["config"]
        return cls(loaded, signature, config["vocabulary_size"], config["hidden_dim"], path)

    def __call__(self, inputs):
        import tensorflow as tf

        ids, mask = _inputs.validate(inputs, self.vocabulary_size)
        out = self._fn(token_ids=tf.constant(ids), padding_mask=tf.constant(mask))
        return np.asarray(out[contract.SEQUENCE_OUTPUT])
