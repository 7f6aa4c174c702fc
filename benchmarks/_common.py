"""Shared helpers for the benchmark scripts: interleaved timing and `name: value` output.

Only ratios measured in one process mean anything on a shared machine, so every benchmark
runs its peers alternately (ours, theirs, ours, theirs, ...) and reports medians.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # so `tests.torch_reference` imports when run as a script
    sys.path.insert(0, REPO)


def emit(name: str, value) -> None:
    """Print one `name: value` line (floats with 4 significant digits)."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}: {value}", flush=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every callable `warmup` times, then `repeats` rounds of one call each, rotating the order."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(timed(runs[name]))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i] (robust to load changes between rounds)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))
