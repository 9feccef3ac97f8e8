"""The architecture of a Falcon model as one frozen, validated record.

Everything that decides the shape of the network lives here, checked once,
so layers are built from plain typed values and never re-validate.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

# Names a dtype may take; "mixed_*" keeps variables in float32 and computes
# in the 16-bit type.
DTYPE_NAMES = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class FalconConfig:
    """Hyper-parameters of the Falcon-RW decoder.

    Field names and meanings match keras-hub's `FalconBackbone` arguments.
    """

    vocabulary_size: int  # rows of the token embedding (and of the tied LM head)
    num_layers: int  # decoder blocks
    num_attention_heads: int  # query heads; also key/value heads (multi-head)
    hidden_dim: int  # width of the residual stream; divisible by the heads
    intermediate_dim: int  # width of the MLP's hidden layer
    layer_norm_epsilon: float = 1e-5  # every LayerNorm, final one included
    attention_dropout_rate: float = 0.0  # on attention probabilities, training only
    feedforward_dropout_rate: float = 0.0  # on the MLP output, training only

    def __post_init__(self):
        for field in ("vocabulary_size", "num_layers", "num_attention_heads",
                      "hidden_dim", "intermediate_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(
                    f"`{field}` must be a positive integer; received {value!r} "
                    f"of type {type(value).__name__}."
                )
            if value <= 0:
                raise ValueError(f"`{field}` must be a positive integer; received {value}.")
            object.__setattr__(self, field, int(value))
        if self.hidden_dim % self.num_attention_heads:
            raise ValueError(
                f"`hidden_dim` ({self.hidden_dim}) must be divisible by "
                f"`num_attention_heads` ({self.num_attention_heads})."
            )
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0 \
                or not math.isfinite(eps):
            raise ValueError(
                f"`layer_norm_epsilon` must be a positive finite number; received {eps!r}."
            )
        object.__setattr__(self, "layer_norm_epsilon", float(eps))
        for field in ("attention_dropout_rate", "feedforward_dropout_rate"):
            rate = getattr(self, field)
            if isinstance(rate, bool) or not isinstance(rate, numbers.Real) \
                    or not 0.0 <= rate < 1.0:
                raise ValueError(f"`{field}` must be a number in [0, 1); received {rate!r}.")
            object.__setattr__(self, field, float(rate))

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_attention_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def parameter_count(self) -> int:
        """Number of weights in the backbone (embedding included, counted once)."""
        h, i = self.hidden_dim, self.intermediate_dim
        per_layer = (
            2 * 2 * h  # two LayerNorms
            + h * 3 * h + 3 * h  # query/key/value
            + h * h + h  # attention output
            + h * i + i + i * h + h  # MLP
        )
        return self.vocabulary_size * h + self.num_layers * per_layer + 2 * h
