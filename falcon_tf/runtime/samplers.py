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

from __future__ import annotations

import dataclasses

import numpy as np

NAMES = ("greedy", "top_k", "top_p", "temperature")


# keras-hub's sampler names and classes -> ours ("random" is sampling at a temperature).
_ALIASES = {"random": "temperature"}
_KERAS_HUB_CLASSES = {"GreedySampler": "greedy", "TopKSampler": "top_k",
                      "TopPSampler": "top_p", "RandomSampler": "temperature"}


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler by name with its parameters (defaults are keras-hub's).

    `seed` (an int, or None): the seed `generate` draws with when it is given
    none; with a seed, the same prompt gives the same tokens.

    >>> Sampler("top_k", k=40, temperature=0.7)
    Sampler(name='top_k', k=40, p=0.1, temperature=0.7, seed=None)
    """

    name: str = "greedy"
    k: int = 5
    p: float = 0.1
    temperature: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"`sampler` must be one of {', '.join(NAMES)} or a Sampler; "
                             f"received {self.name!r}.")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"Sampler `k` must be a positive integer; received {self.k!r}.")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float, np.floating)) or \
                not 0.0 < float(self.p) <= 1.0:
            raise ValueError(f"Sampler `p` must be in (0, 1]; received {self.p!r}.")
        if isinstance(self.temperature, bool) or not isinstance(
                self.temperature, (int, float, np.floating)) or not float(self.temperature) > 0.0:
            raise ValueError(f"Sampler `temperature` must be positive; received "
                             f"{self.temperature!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(
                self.seed, (int, np.integer))):
            raise ValueError(f"Sampler `seed` must be an integer or None; received "
                             f"{self.seed!r}.")

    def parameters(self):
        """(k, p, temperature): k = 0 keeps every token, temperature 0 is greedy."""
        if self.name == "greedy":
            return 0, 1.0, 0.0
        if self.name == "top_k":
            return int(self.k), 1.0, float(self.temperature)
        if self.name == "top_p":
            return 0, float(self.p), float(self.temperature)
        return 0, 1.0, float(self.temperature)

    def get_config(self):
        """Plain JSON-able data; `Sampler.from_config` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(config, dict) or not set(config) <= fields:
            found = sorted(set(config) - fields) if isinstance(config, dict) else config
            raise ValueError(f"A sampler config holds {', '.join(sorted(fields))}; "
                             f"received {found!r}.")
        return cls(**config)


def _from_keras_hub(sampler):
    """A keras_hub.samplers object -> Sampler, or ValueError naming what does not map."""
    kind = type(sampler).__name__
    name = _KERAS_HUB_CLASSES.get(kind)
    if name is None:
        raise ValueError(f"`sampler` {kind} has no counterpart here; the samplers are "
                         f"{', '.join(NAMES)} (keras-hub's GreedySampler, TopKSampler, "
                         f"TopPSampler and RandomSampler).")
    if name == "top_p" and getattr(sampler, "k", None) is not None:
        raise ValueError("`sampler` TopPSampler with `k` set (top-p within the top k) has no "
                         "counterpart here; use top_k or top_p alone.")
    fields = {"name": name, "temperature": float(getattr(sampler, "temperature", 1.0)),
              "seed": getattr(sampler, "seed", None)}
    if name == "top_k":
        fields["k"] = int(sampler.k)
    if name == "top_p":
        fields["p"] = float(sampler.p)
    if not isinstance(fields["seed"], (int, np.integer, type(None))):
        fields["seed"] = None  # a keras.random.SeedGenerator: its state is not a seed
    return Sampler(**fields)


def resolve(sampler):
    """A name ("greedy", "top_k", "top_p", "temperature" or keras-hub's
    "random"), a Sampler, or a keras_hub.samplers object -> Sampler."""
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        return Sampler(_ALIASES.get(sampler, sampler))
    if type(sampler).__module__.startswith("keras_hub."):
        return _from_keras_hub(sampler)
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
