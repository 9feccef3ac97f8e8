"""Token samplers shared by every runtime: greedy, top-k, top-p and temperature.

A sampler is four numbers, so one graph serves all of them (the SavedModel's
`generate` signature takes them as inputs):
    temperature == 0  greedy (argmax)
    k > 0             keep the k most likely tokens
    p < 1             keep the smallest set of most likely tokens whose
                      probability reaches p
then draw from softmax(logits / temperature) over what is kept. TensorFlow
graphs draw with stateless random ops from (seed, step); the numpy version
(`sample_numpy`, for the on-device loop) from a numpy Generator. Greedy is
identical everywhere; seeded draws repeat within one runtime.
"""

import dataclasses

import numpy as np

NAMES = ("greedy", "top_k", "top_p", "temperature")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler by name with its parameters (defaults are keras-hub's).

    >>> Sampler("top_k", k=40, temperature=0.7)
    Sampler(name='top_k', k=40, p=0.1, temperature=0.7)
    """

    name: str = "greedy"
    k: int = 5
    p: float = 0.1
    temperature: float = 1.0

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"`sampler` must be one of {', '.join(NAMES)} or a Sampler; "
                             f"received {self.name!r}.")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"Sampler `k` must be a positive integer; received {self.k!r}.")
        if not 0.0 < float(self.p) <= 1.0:
            raise ValueError(f"Sampler `p` must be in (0, 1]; received {self.p!r}.")
        if not float(self.temperature) > 0.0:
            raise ValueError(f"Sampler `temperature` must be positive; received "
                             f"{self.temperature!r}.")

    def parameters(self):
        """(k, p, temperature): k = 0 keeps every token, temperature 0 is greedy."""
        if self.name == "greedy":
            return 0, 1.0, 0.0
        if self.name == "top_k":
            return int(self.k), 1.0, float(self.temperature)
        if self.name == "top_p":
            return 0, float(self.p), float(self.temperature)
        return 0, 1.0, float(self.temperature)


def resolve(sampler):
    """"greedy" | "top_k" | "top_p" | "temperature" | Sampler -> Sampler."""
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        return Sampler(sampler)
    raise ValueError(f"`sampler` must be one of {', '.join(NAMES)} or a Sampler; received "
                     f"{sampler!r}.")


def sample_tf(logits, k, p, temperature, seed, step):
    """logits (b, vocab) float32 -> (b,) int32 token ids, in a TensorFlow graph.

    k, p, temperature: scalars (tensors or numbers), see the module docstring.
    seed: int32 scalar; step: int32 scalar, so every step draws afresh.
    Sorts once for top-k and top-p together; runs under XLA.
    """
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

    def draw():
        scaled = logits / tf.cast(temperature, tf.float32)
        order = tf.argsort(scaled, axis=-1, direction="DESCENDING", stable=True)
        ranked = tf.gather(scaled, order, batch_dims=1)  # (b, vocab), descending
        vocab = tf.shape(logits)[-1]
        rank = tf.range(vocab)[None, :]
        kk = tf.where(tf.cast(k, tf.int32) > 0, tf.cast(k, tf.int32), vocab)
        probs = tf.nn.softmax(ranked, axis=-1)
        before = tf.cumsum(probs, axis=-1, exclusive=True)  # mass of the tokens ranked above
        keep = (rank < kk) & (before < tf.cast(p, tf.float32))
        ranked = tf.where(keep, ranked, tf.constant(-np.inf, tf.float32))
        seeds = tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)])
        choice = tf.random.stateless_categorical(ranked, 1, seed=seeds, dtype=tf.int32)[:, 0]
        return tf.gather(order, choice[:, None], batch_dims=1)[:, 0]

    return tf.cond(tf.cast(temperature, tf.float32) > 0.0, draw, lambda: greedy)


def sample_numpy(logits, sampler, rng):
    """logits (b, vocab) -> (b,) int32 ids with numpy alone (the on-device loop)."""
    k, p, temperature = resolve(sampler).parameters()
    logits = np.asarray(logits, np.float64)
    if temperature == 0.0:
        return logits.argmax(axis=-1).astype(np.int32)
    out = np.empty(logits.shape[0], np.int32)
    for row, values in enumerate(logits / temperature):
        order = np.argsort(-values, kind="stable")
        ranked = values[order]
        probs = np.exp(ranked - ranked[0])
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        keep = before < p
        if k:
            keep[k:] = False
        kept = probs * keep
        out[row] = order[rng.choice(len(kept), p=kept / kept.sum())]
    return out
