"""Shared helpers for the benchmark scripts: interleaved timing and `name: value` output.

Only ratios measured in one process mean anything on a shared machine, so every benchmark
runs its peers alternately (ours, theirs, ours, theirs, ...) and reports medians. A ratio is
the median over rounds of each round's ratio, printed with its spread (`ratio_spread`): the
quartiles and the extremes over the rounds, so one run shows whether a row holds.
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


def ratio_spread(numerator: list[float], denominator: list[float]) -> str:
    """Per-round ratios numerator[i] / denominator[i]: "median (quartiles q1–q3, range lo–hi, n rounds)"."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return (
        f"{statistics.median(ratios):.4g} (quartiles {q1:.4g}-{q3:.4g}, "
        f"range {ratios[0]:.4g}-{ratios[-1]:.4g}, {len(ratios)} rounds)"
    )


def cpu_description() -> str:
    """CPU model (family/model number), visible cores, the widest x86 vector ISA: rows differ between
    CPU generations sold under one name (an "AMD EPYC" may be family 23, 25 or 26)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    isa = next((name for name in ("avx512f", "avx2", "sse4_2") if name in flags), "?")
    model = fields.get("model name", "unknown CPU")
    return (
        f"{model} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}); "
        f"{len(os.sched_getaffinity(0))} visible cores; {isa}"
    )


def emit_machine() -> None:
    """The machine a run measured on, and how busy it was (1-minute load average at the start)."""
    emit("cpu", cpu_description())
    emit("load_average_1min_at_start", os.getloadavg()[0])


def emit_load_at_end() -> None:
    """1-minute load average at the end: near the core count or above means other work shared the CPU."""
    emit("load_average_1min_at_end", os.getloadavg()[0])
