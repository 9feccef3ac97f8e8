"""What every runtime (Keras, `falcon_tf.serving`, `falcon_tf.lite`) shares.

  generation.py  a `generate` request checked before any graph runs
  samplers.py    greedy, top-k, top-p and temperature
  inputs.py      a loader's inputs checked before any interpreter sees them
  evaluation.py  perplexity and greedy agreement of any runtime's causal LM

No TensorFlow: the edge loaders import these.
"""
