"""The export contract: signatures every runtime agrees on, as data.

The signatures' tensors (name, shape, dtype) are built here from a model's
sizes (`backbone_signature`, `causal_lm_signatures`); the exporters trace
their functions with these specs and store them verbatim in the manifest, the
loaders (`falcon_tf.serving`, `falcon_tf.lite`) read the names, and the
Android app's constants are checked against them. Plain data, importable with
the standard library alone.

Backbone (one signature):
    serving_default: token_ids, padding_mask (int32 [batch, seq])
                     -> sequence_output (float32 [batch, seq, hidden])

Causal LM, the on-device LLM convention (ai-edge-torch / LiteRT-LM), batch 1:
    prefill_<L>: tokens int32 [1, L], input_pos int32 [L],
                 mask float32 [1, 1, L, cache_length] (0 where attention is
                 allowed, MASK_VALUE elsewhere),
                 kv_cache_k_<i>, kv_cache_v_<i> float32 [1, kv_heads, cache_length, head_dim]
              -> kv_cache_k_<i>, kv_cache_v_<i> (updated); no logits, as in
                 LiteRT-LM's and litert-torch's files: a prefill only fills
                 the caches, so the last block stops at its keys and values
                 and no LM head runs. A host prefills the prompt but its last
                 token and decodes that token for the first logits.
    decode:      the same with L = 1, and logits float32 [1, 1, vocab] first.
    decode_<W>:  optional, the same as decode for a token at a position below
                 W: it attends only the first W slots (the mask's first W
                 columns are read), so a step reads W slots of the cache, not
                 cache_length. Runtimes that know only `decode` lose nothing but
                 speed.
    windowed_prefill_<L>_<W>:
                 optional, the same as prefill_<L> for a chunk that ends at or
                 before slot W (input_pos[0] + L <= W): it attends only the
                 first W slots, so a prompt's first chunks read W slots of the
                 cache, not cache_length. A file has one for every prefill
                 length L <= W of each of its prefill windows W. The name does
                 not start with `prefill`: LiteRT-LM takes every signature
                 whose name does as a prefill of any position.

`input_pos` holds the positions of the L tokens (rotary angles use each); the
tokens' keys and values go to the contiguous cache slots input_pos[0] ..
input_pos[0] + L - 1, so padded rows of a chunk (LiteRT-LM sets their
input_pos to 0) never overwrite earlier slots.

The caches are head-major, [1, kv_heads, cache_length, head_dim] (the slot
axis is 2): attention multiplies each key/value head's slots as they lie, so
no step transposes a whole cache per layer; only the new tokens' keys and
values turn head-major before they are written.

The cache capacity is `cache_length` in every Python and Java API; the
manifest stores it as `causal_lm.cache_len`, the artifact format's field name,
kept so that existing artifacts and apps still read it.
"""

BACKBONE_SIGNATURE = "serving_default"
TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"
SEQUENCE_OUTPUT = "sequence_output"

PREFILL_PREFIX = "prefill_"
WINDOWED_PREFILL_PREFIX = "windowed_prefill_"
DECODE_SIGNATURE = "decode"
TOKENS = "tokens"
INPUT_POS = "input_pos"
MASK = "mask"
LOGITS = "logits"
CACHE_K_PREFIX = "kv_cache_k_"
CACHE_V_PREFIX = "kv_cache_v_"
# Additive mask value for a forbidden key: large, and finite in float16 (the
# GPU delegate computes in float16, where -1e9 becomes -inf and then NaN).
MASK_VALUE = -30000.0

# Defaults every exporter, loader and command takes from here.
# KV cache capacity (tokens) of the Keras causal LM and of the SavedModel it
# exports: Falcon-RW's context.
CACHE_LENGTH = 2048
# KV cache capacity of the TFLite causal LM: a phone's memory budget (at
# falcon-rw-1b's shape a float32 cache of 2048 slots is 805 MB, of 256 slots 101 MB).
DEVICE_CACHE_LENGTH = 256
# TFLite variants, and the one a loader opens when none is named: float32,
# the one whose numbers equal Keras's.
VARIANTS = ("fp32", "fp16", "int8", "int4")
DEFAULT_VARIANT = "fp32"


def check_cache_length(cache_length):
    """ValueError naming `cache_length` unless it is an integer >= 2."""
    if isinstance(cache_length, bool) or not isinstance(cache_length, int) or cache_length < 2:
        raise ValueError(f"`cache_length` must be an integer >= 2; received {cache_length!r}.")


def check_variant(variant):
    """ValueError naming `variant` unless it is one of VARIANTS."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {', '.join(VARIANTS)}; "
                         f"received {variant!r}.")


def check_variants(variants):
    """ValueError naming `variants` unless it is a non-empty subset of VARIANTS."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"`variants` must be a non-empty subset of {', '.join(VARIANTS)}; "
                         f"received {', '.join(map(str, variants)) or 'nothing'}.")


# Files the device side reads, relative to the artifact directory.
TOKENIZER_FILE = "tokenizer/tokenizer.json"
MANIFEST_FILE = "manifest.json"


def prefill_signature(length):
    """The prefill signature's name for prompts of `length` tokens."""
    return f"{PREFILL_PREFIX}{int(length)}"


def decode_window_signature(window):
    """The name of the decode signature that attends the first `window` slots."""
    return f"{DECODE_SIGNATURE}_{int(window)}"


def decode_window(name):
    """`window` of a decode_<window> signature name; None for any other name."""
    prefix = DECODE_SIGNATURE + "_"
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


def windowed_prefill_signature(length, window):
    """The name of the prefill signature for chunks of `length` tokens that
    attends the first `window` slots."""
    return f"{WINDOWED_PREFILL_PREFIX}{int(length)}_{int(window)}"


def windowed_prefill(name):
    """(length, window) of a windowed_prefill_<L>_<W> name; None for any other name."""
    if not name.startswith(WINDOWED_PREFILL_PREFIX):
        return None
    parts = name[len(WINDOWED_PREFILL_PREFIX):].split("_")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def is_prefill(name):
    """Whether signature `name` is a prefill (prefill_<L> or
    windowed_prefill_<L>_<W>): it returns the caches only."""
    return name.startswith(PREFILL_PREFIX) or windowed_prefill(name) is not None


def windowed_prefills(prefill_lengths, prefill_windows):
    """[(L, W)] of the windowed_prefill_<L>_<W> signatures a file with these
    prefill lengths and prefill windows has: every L <= W."""
    return [(n, w) for w in sorted(prefill_windows) for n in sorted(prefill_lengths) if n <= w]


def cache_shape(kv_heads, head_dim, cache_length, batch=1):
    """The shape of one layer's key or value cache: (batch, kv_heads,
    cache_length, head_dim), head-major, the layout attention reads (no
    per-layer transpose of the whole cache); None for a size a signature
    leaves open."""
    return (batch, kv_heads, cache_length, head_dim)


def tensor_spec(shape, dtype):
    """One tensor of a signature, as the manifest stores it: {"shape": [...],
    "dtype": "int32" | "float32"}; None in `shape` for a size left open."""
    return {"shape": [None if d is None else int(d) for d in shape], "dtype": dtype}


def backbone_signature(batch, seq, hidden_dim):
    """{"inputs", "outputs"} of the backbone's `BACKBONE_SIGNATURE` (None for an
    open batch or sequence length)."""
    ids = tensor_spec((batch, seq), "int32")
    return {"inputs": {TOKEN_IDS: ids, PADDING_MASK: ids},
            "outputs": {SEQUENCE_OUTPUT: tensor_spec((batch, seq, hidden_dim), "float32")}}


def causal_lm_signature(length, cache_length, num_layers, kv_heads, head_dim, vocabulary_size,
                        logits=True):
    """{"inputs", "outputs"} of a causal-LM step over `length` tokens: decode
    and decode_<W> (length 1, `logits`), or prefill_<length> and
    windowed_prefill_<length>_<W> (no `logits`)."""
    cache = tensor_spec(cache_shape(kv_heads, head_dim, cache_length), "float32")
    caches = {name: cache for name in cache_names(num_layers)}
    outputs = {LOGITS: tensor_spec((1, length, vocabulary_size), "float32")} if logits else {}
    return {"inputs": {TOKENS: tensor_spec((1, length), "int32"),
                       INPUT_POS: tensor_spec((length,), "int32"),
                       MASK: tensor_spec((1, 1, length, cache_length), "float32"), **caches},
            "outputs": {**outputs, **caches}}


def causal_lm_signatures(prefill_lengths, decode_windows, cache_length, num_layers, kv_heads,
                         head_dim, vocabulary_size, prefill_windows=()):
    """{signature name: causal_lm_signature} for every prefill_<L>, decode,
    decode_<W> and windowed_prefill_<L>_<W> of a causal-LM file."""
    def step(length, logits=True):
        return causal_lm_signature(length, cache_length, num_layers, kv_heads, head_dim,
                                   vocabulary_size, logits)

    return {**{prefill_signature(n): step(n, logits=False) for n in prefill_lengths},
            DECODE_SIGNATURE: step(1),
            **{decode_window_signature(w): step(1) for w in decode_windows},
            **{windowed_prefill_signature(n, w): step(n, logits=False)
               for n, w in windowed_prefills(prefill_lengths, prefill_windows)}}


# The SavedModel's causal-LM signatures (TF Serving): any batch and cache
# length; the graph builds the mask.
SERVING_PREFILL_SIGNATURE = "prefill"
GENERATE_SIGNATURE = "generate"


def serving_step_signature(length, num_layers, kv_heads, head_dim, vocabulary_size):
    """{"inputs", "outputs"} of the SavedModel's `prefill` (length None) or
    `decode` (length 1) signature."""
    cache = tensor_spec(cache_shape(kv_heads, head_dim, None, batch=None), "float32")
    caches = {name: cache for name in cache_names(num_layers)}
    positions = tensor_spec((None, length), "int32")
    return {"inputs": {TOKENS: positions, INPUT_POS: positions, **caches},
            "outputs": {LOGITS: tensor_spec((None, length, vocabulary_size), "float32"),
                        **caches}}


def generate_signature():
    """{"inputs", "outputs"} of the SavedModel's `generate`: the whole sampling
    loop in one call (top_k 1 is greedy)."""
    ids = tensor_spec((None, None), "int32")
    scalar = {name: tensor_spec((), dtype) for name, dtype in (
        ("max_length", "int32"), ("top_k", "int32"), ("top_p", "float32"),
        ("temperature", "float32"), ("seed", "int32"))}
    return {"inputs": {TOKEN_IDS: ids, PADDING_MASK: ids, **scalar,
                       "stop_token_ids": tensor_spec((None,), "int32")},
            "outputs": {TOKEN_IDS: ids, PADDING_MASK: ids}}


def cache_names(num_layers):
    """The cache tensor names in layer order: k_0, v_0, k_1, v_1, …"""
    names = []
    for i in range(num_layers):
        names += [f"{CACHE_K_PREFIX}{i}", f"{CACHE_V_PREFIX}{i}"]
    return names
