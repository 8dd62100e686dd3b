"""Timing used by ``fastgrad demo`` and the benchmarks: medians over rounds, never a threshold."""

import statistics
import time

__all__ = ["median_time"]


def median_time(fn, *args, repeat=7, min_time=0.2, warmup=3):
    """Median seconds per call of ``fn(*args)`` over ``repeat`` rounds, each of enough calls to
    last about ``min_time / 4`` (after ``warmup`` calls that compile, trace and fill caches)."""
    for _ in range(warmup):
        fn(*args)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*args)
        if time.perf_counter() - t0 >= min_time / 4 or n >= 1 << 20:
            break
        n *= 4
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*args)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)
