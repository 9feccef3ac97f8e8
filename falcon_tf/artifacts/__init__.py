"""What exporters write and loaders read, in every runtime.

  contract.py  the signatures as data: each tensor's name, shape and dtype from the
               model's sizes; the cache lengths, variants and their checks
  manifest.py  the per-preset manifest: what was exported, with sha256, read and checked

Neither needs TensorFlow: the edge loaders and the Android core read the same facts.
"""
