"""Weights whose statistics resemble a trained Falcon's, for judging quantization.

Gaussian weights of one scale (conftest.randomize) flatter every quantizer: no
weight lies far from the others, every row of a matrix has the same range, and
every activation channel has the same size. Trained transformers differ in the
ways that hurt quantization, and `trained_like` reproduces those:

- Heavy tails: projection kernels and the embedding are Student-t (4 degrees
  of freedom; excess kurtosis like trained LLM weights), so a few weights per
  tensor are many standard deviations out and stretch any scale taken from a
  tensor's, a channel's or a block's maximum.
- Uneven output channels: each kernel column (output channel) and each
  embedding row gets its own scale, log-uniform over a decade (0.3x to 3x).
  One scale per tensor then wastes most of its range on the small channels.
- Outlier activation channels: LayerNorm gains are about 1 (plus or minus 0.2)
  except for a few channels (1 in 64) whose gain is 8, as trained LLMs grow
  a few large hidden features; dynamically quantized activations lose the
  small channels' precision to them.
- Blocks that matter: kernels are scaled to 1/sqrt(fan_in), so each attention
  and MLP block changes the residual stream about as much as it carries
  (as in a trained model) instead of vanishing beside the embedding, which
  would hide the projections' quantization error.
- Biases and LayerNorm offsets are small (0.02 and 0.1 standard deviations).
"""

import numpy as np

DEGREES_OF_FREEDOM = 4
CHANNEL_SCALE_RANGE = (0.3, 3.0)  # a decade
OUTLIER_EVERY = 64  # one LayerNorm channel in this many
OUTLIER_GAIN = 8.0
# The model shape at which the quantization schemes are judged (the TFLite
# tests', benchmarks/int4_schemes.py's and kv_cache_precision.py's).
SHAPE = dict(vocabulary_size=2048, num_layers=2, num_attention_heads=4, hidden_dim=128,
             intermediate_dim=512)


def _student_t(rng, shape):
    draws = rng.standard_t(DEGREES_OF_FREEDOM, shape)
    return draws / np.sqrt(DEGREES_OF_FREEDOM / (DEGREES_OF_FREEDOM - 2))  # unit variance


def _channel_scales(rng, count):
    low, high = np.log(CHANNEL_SCALE_RANGE)
    return np.exp(rng.uniform(low, high, count))


def trained_like(model, seed=0):
    """Assigns trained-like weights (see the module docstring) to a FalconBackbone."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape, name = tuple(var.shape), var.path
        if name.endswith("embeddings"):  # (vocabulary, hidden): one scale per token row
            value = _student_t(rng, shape) * _channel_scales(rng, shape[0])[:, None]
        elif name.endswith("kernel"):  # (fan_in, fan_out): one scale per output channel
            value = _student_t(rng, shape) * _channel_scales(rng, shape[-1]) / np.sqrt(shape[0])
        elif name.endswith("gamma"):
            value = rng.normal(1.0, 0.2, shape)
            outliers = rng.choice(shape[0], max(1, shape[0] // OUTLIER_EVERY), replace=False)
            value[outliers] = OUTLIER_GAIN
        elif name.endswith("beta"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("bias"):
            value = rng.normal(0.0, 0.02, shape)
        else:
            raise ValueError(f"No trained-like statistics for weight {name} {shape}.")
        var.assign(value.astype("float32"))
    return model
