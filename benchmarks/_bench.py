"""What the benchmark scripts share: the arguments for timing, the backbone
benchmark's model and input, and interleaved timing."""

import time

import numpy as np

# The shape every latency benchmark uses (float32).
SHAPE = dict(vocabulary_size=8192, num_layers=6, num_attention_heads=8, hidden_dim=512,
             intermediate_dim=2048)
BATCH, SEQ = 4, 128


def timing_args(parser):
    """Adds --runs and --warmup; returns the parsed arguments, runs checked >= 10."""
    parser.add_argument("--runs", type=int, default=15, help="timed calls per contender (>= 10)")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    return args


def benchmark_backbone(config=SHAPE, batch=BATCH, seq=SEQ, seed=0):
    """A FalconBackbone with N(0, 0.02) weights and an unpadded int32 batch."""
    from falcon_tf import FalconBackbone
    from falcon_tf.checkpoints.keras_hub import named_variables

    model = FalconBackbone(**config)
    rng = np.random.default_rng(seed)
    for var in named_variables(model).values():
        var.assign(rng.normal(0, 0.02, tuple(var.shape)).astype("float32"))
    ids = rng.integers(0, config["vocabulary_size"], (batch, seq)).astype("int32")
    return model, {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def interleaved_medians(contenders, runs, warmup):
    """{name: callable} -> {name: median milliseconds}.

    Each callable is warmed up `warmup` times, then all are called round by
    round, so a slow patch of a shared machine hits every contender alike.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}
