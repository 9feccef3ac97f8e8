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
    """Hyper-parameters of a Falcon decoder.

    The first eight fields are keras-hub's `FalconBackbone` arguments, with the
    same names and meanings; the rest reach the other Falcon models.
    """

    vocabulary_size: int  # rows of the token embedding (and of the tied LM head)
    num_layers: int  # decoder blocks
    num_attention_heads: int  # query heads; also key/value heads (multi-head)
    hidden_dim: int  # width of the residual stream; divisible by the heads
    intermediate_dim: int  # width of the MLP's hidden layer
    layer_norm_epsilon: float = 1e-5  # every LayerNorm, final one included
    attention_dropout_rate: float = 0.0  # on attention probabilities, training only
    feedforward_dropout_rate: float = 0.0  # on the MLP output, training only
    # --- The rest of the Falcon family. The defaults are Falcon-RW (keras-hub's model).
    num_kv_heads: int | None = None  # key/value heads: None = one per query head,
    #                                  1 = multi-query (7B), k > 1 = grouped-query (40B/180B)
    position_embedding: str = "alibi"  # "alibi" (RW) or "rotary" (7B/40B/180B)
    rope_theta: float = 10000.0  # rotary base frequency; only with "rotary"
    parallel_attention: bool = False  # attention and MLP both read the block input, summed
    separate_mlp_layer_norm: bool = False  # parallel blocks: MLP has its own LayerNorm
    #                                        (ln_attn + ln_mlp, the "new decoder architecture")
    use_bias: bool = True  # biases of the attention and MLP projections

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

        kv = self.num_kv_heads
        if kv is not None:
            if isinstance(kv, bool) or not isinstance(kv, numbers.Integral) or kv <= 0:
                raise ValueError(f"`num_kv_heads` must be None or a positive integer; "
                                 f"received {kv!r}.")
            if self.num_attention_heads % kv:
                raise ValueError(f"`num_kv_heads` ({kv}) must divide `num_attention_heads` "
                                 f"({self.num_attention_heads}).")
            object.__setattr__(self, "num_kv_heads", int(kv))
        if self.position_embedding not in ("alibi", "rotary"):
            raise ValueError(f"`position_embedding` must be 'alibi' or 'rotary'; "
                             f"received {self.position_embedding!r}.")
        theta = self.rope_theta
        if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 0 \
                or not math.isfinite(theta):
            raise ValueError(f"`rope_theta` must be a positive number; received {theta!r}.")
        object.__setattr__(self, "rope_theta", float(theta))
        if self.position_embedding == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary position embedding needs an even head dimension; "
                             f"`hidden_dim` / `num_attention_heads` = {self.head_dim}.")
        for field in ("parallel_attention", "separate_mlp_layer_norm", "use_bias"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"`{field}` must be True or False; "
                                 f"received {getattr(self, field)!r}.")
        if self.separate_mlp_layer_norm and not self.parallel_attention:
            raise ValueError("`separate_mlp_layer_norm=True` needs `parallel_attention=True` "
                             "(a sequential block already has one LayerNorm per branch).")

    @property
    def kv_heads(self) -> int:
        """Key/value heads, with None resolved to one per query head."""
        return self.num_kv_heads or self.num_attention_heads

    @property
    def is_keras_hub_architecture(self) -> bool:
        """True when keras-hub's FalconBackbone can express this config."""
        return all(getattr(self, f.name) == f.default for f in dataclasses.fields(self)
                   if f.name in FAMILY_FIELDS)

    @property
    def layer_norm_names(self) -> tuple[str, ...]:
        """Each block's LayerNorms, named as in Hugging Face checkpoints."""
        if not self.parallel_attention:
            return ("input_layernorm", "post_attention_layernorm")
        if self.separate_mlp_layer_norm:
            return ("ln_attn", "ln_mlp")
        return ("input_layernorm",)

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_attention_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def qkv_width(self) -> int:
        """Output width of the fused query/key/value projection: the query
        heads, then the key heads, then the value heads."""
        return (self.num_attention_heads + 2 * self.kv_heads) * self.head_dim

    def variable_specs(self) -> dict[str, tuple[int, ...]]:
        """Every backbone variable's canonical name -> its shape, in the order
        the model holds them. The names are the ones checkpoints are mapped to
        (Keras kernels are (fan_in, fan_out)); the parameter count, the
        keras-hub and Hugging Face maps' shape checks all derive from this."""
        h, i = self.hidden_dim, self.intermediate_dim
        specs = {"token_embedding/embeddings": (self.vocabulary_size, h)}
        dense = {"attention/query_key_value": (h, self.qkv_width),
                 "attention/output_dense": (h, h), "dense_h_to_4h": (h, i),
                 "dense_4h_to_h": (i, h)}
        for layer in range(self.num_layers):
            prefix = f"transformer_layer_{layer}"
            for norm in self.layer_norm_names:
                specs[f"{prefix}/{norm}/gamma"] = specs[f"{prefix}/{norm}/beta"] = (h,)
            for path, shape in dense.items():
                specs[f"{prefix}/{path}/kernel"] = shape
                if self.use_bias:
                    specs[f"{prefix}/{path}/bias"] = shape[-1:]
        specs["final_layernorm/gamma"] = specs["final_layernorm/beta"] = (h,)
        return specs

    def parameter_count(self) -> int:
        """Number of weights in the backbone (embedding included, counted once)."""
        return sum(math.prod(shape) for shape in self.variable_specs().values())


# Fields keras-hub's FalconBackbone does not have (its model is their defaults).
FAMILY_FIELDS = ("num_kv_heads", "position_embedding", "rope_theta", "parallel_attention",
                 "separate_mlp_layer_norm", "use_bias")
