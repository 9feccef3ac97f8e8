"""The tokenizer of a preset -> `artifacts/<name>/tokenizer/tokenizer.json`, in the manifest.

Every export writes it when the preset has tokenizer files, so each runtime's
loader (and the Android app) tokenizes with exactly the model's vocabulary.
"""

import os

from falcon_tf.artifacts import contract, manifest


def export_tokenizer(preset, artifact_dir, tokenizer=None):
    """Writes the tokenizer (the preset's, or `tokenizer`) and records it in the
    manifest. Returns the manifest entry, or None when the preset has no
    tokenizer files."""
    from falcon_tf.checkpoints import handles
    from falcon_tf.text.bpe import ByteLevelBPE

    if tokenizer is None:
        try:
            checkpoint = handles.resolve(preset)
        except ValueError:  # a name for a model passed in, not a preset to read files from
            return None
        try:
            tokenizer = ByteLevelBPE.from_preset(checkpoint.source)
        except FileNotFoundError:
            return None
    folder = os.path.join(artifact_dir, os.path.dirname(contract.TOKENIZER_FILE))
    tokenizer.save_assets(folder)
    entry = {
        "files": manifest.describe_files(artifact_dir, folder),
        "start_token_id": tokenizer.start_token_id,
        "end_token_id": tokenizer.end_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vocabulary_size": tokenizer.vocabulary_size(),
    }
    manifest.update(artifact_dir, lambda data: data.__setitem__("tokenizer", entry))
    return entry
