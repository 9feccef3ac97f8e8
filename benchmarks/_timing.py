"""Interleaved timing shared by the benchmark scripts."""

import time

import numpy as np


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
