"""Paired differences of a study arm against the baseline arm, with 95 % intervals.

Every arm is trained with the same seeds and scored on the same held-out scans, so arm − baseline
is taken per (seed, held-out patient): D has shape (seeds, patients). Its mean is the effect; two
intervals say how sure it is:

  bootstrap  crossed (two-way) percentile bootstrap: seeds and patients resampled independently with
             replacement (a training seed and a held-out patient are both draws the reader did not
             choose), the mean of the resampled D each time; the 2.5th and 97.5th percentiles.
  t          paired t-interval over seeds of each seed's mean over patients (df = seeds − 1); it
             treats the patients as fixed, so it answers "would other seeds agree" only.

A scan under several protocols is one patient: its differences are averaged over the protocols
before the pooled interval, so a patient does not count twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_DRAWS = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same results always give the same interval


def crossed_bootstrap(
    differences: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95 % percentile interval of the mean of `differences` (seeds, patients), both axes resampled."""
    d = np.asarray(differences, float)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, d.shape[0], size=(draws, d.shape[0]))
    cols = rng.integers(0, d.shape[1], size=(draws, d.shape[1]))
    means = d[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def t_interval(differences: np.ndarray) -> tuple[float, float]:
    """95 % paired t-interval over seeds (rows) of the row means; (nan, nan) with one seed."""
    from scipy import stats

    per_seed = np.asarray(differences, float).mean(axis=1)
    if per_seed.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.975, per_seed.size - 1) * per_seed.std(ddof=1) / math.sqrt(per_seed.size)
    return float(per_seed.mean() - half), float(per_seed.mean() + half)


def difference_matrix(
    results: Sequence[dict[str, Any]],
    arm: str,
    baseline: str,
    metric: str,
    protocols: Sequence[str],
    study_protocols: Sequence[str],
) -> tuple[np.ndarray, list[int]]:
    """D (seeds, patients): `arm` − `baseline` per seed both ran and per patient, averaged over `protocols`.

    Case keys are those of the study's results (`case_key` over the study's protocols).
    """
    by_run = {(r["arm"], r["seed"]): r["cases"] for r in results}
    seeds = sorted(s for a, s in by_run if a == arm and (baseline, s) in by_run)
    first = by_run[(baseline, seeds[0])] if seeds else {}
    patients = patients_of(first)
    rows = []
    for seed in seeds:
        a, b = by_run[(arm, seed)], by_run[(baseline, seed)]
        rows.append([
            np.mean([a[case_key(p, proto, study_protocols)][metric] - b[case_key(p, proto, study_protocols)][metric]
                     for proto in protocols])
            for p in patients
        ])  # fmt: skip
    return np.array(rows, float).reshape(len(seeds), len(patients)), seeds


def patients_of(cases: dict[str, Any]) -> list[str]:
    """The patient ids among a run's case keys (the first protocol's keys: no `@protocol`)."""
    return sorted(k for k in cases if "@" not in k)


def case_key(patient: str, protocol: str, protocols: Sequence[str]) -> str:
    """The results' key of `patient` scanned under `protocol` (the study's first protocol: the bare id)."""
    return patient if protocol == protocols[0] else f"{patient}@{protocol}"


def paired_summary(
    results: Sequence[dict[str, Any]],
    baseline: str,
    metrics: Sequence[str],
    protocols: Sequence[str],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{arm: {scope: {metric: {mean, bootstrap_low/high, t_low/high, seeds, patients, seeds_better}}}}.

    scope: each protocol alone, and "pooled" over all of them (per patient). seeds_better: seeds
    whose mean over patients is above the baseline's.
    """
    arms = [a for a in dict.fromkeys(r["arm"] for r in results) if a != baseline]
    scopes = {**{p: [p] for p in protocols}, **({"pooled": list(protocols)} if len(protocols) > 1 else {})}
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for arm in arms:
        out[arm] = {}
        for scope, scope_protocols in scopes.items():
            out[arm][scope] = {}
            for metric in metrics:
                d, seeds = difference_matrix(results, arm, baseline, metric, scope_protocols, protocols)
                if d.size == 0:
                    continue
                lo, hi = crossed_bootstrap(d)
                t_lo, t_hi = t_interval(d)
                out[arm][scope][metric] = {
                    "mean": float(d.mean()), "bootstrap_low": lo, "bootstrap_high": hi, "t_low": t_lo,
                    "t_high": t_hi, "seeds": len(seeds), "patients": d.shape[1],
                    "seeds_better": int((d.mean(axis=1) > 0).sum()),
                }  # fmt: skip
    return out
