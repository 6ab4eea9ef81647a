"""The numbers of a measurement: timed loops, latency statistics, how far outputs moved."""

from __future__ import annotations

import statistics
import time

import numpy as np


def time_loop(fn, warmup: int, iters: int) -> list[float]:
    """`warmup` untimed calls of `fn`, then `iters` timed ones; milliseconds of host clock per call."""
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter
    for _ in range(iters):
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1000.0)
    return samples


def latency_stats(samples_ms: list[float], batch: int) -> dict:
    """median, p90, mean, min, max (ms), sample count, throughput = batch / median."""
    s = sorted(samples_ms)
    median = statistics.median(s)
    return {"median_ms": median, "p90_ms": float(np.percentile(s, 90)), "mean_ms": statistics.fmean(s),
            "min_ms": s[0], "max_ms": s[-1], "n": len(s),
            "throughput_per_s": batch * 1000.0 / median if median > 0 else None}


def ratio(a, b):
    return a / b if a and b else None


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| for floats; 0 or inf (equal or not) for other types."""
    if a.dtype.kind not in "fc":
        return 0.0 if np.array_equal(a, b) else float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = max(float(np.max(np.abs(b64))) if b64.size else 0.0, 1e-12)
    return float(np.max(np.abs(a64 - b64)) / scale) if a64.size else 0.0
