"""Paired differences of the study: pairing by seed and patient, both intervals against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from syncas_jax.study.arms import METRICS, protocol_runs
from syncas_jax.study.paired import crossed_bootstrap, difference_matrix, paired_summary, t_interval

PROTOCOLS = ("demo", "3mm_quarter_dose")


def run(arm, seed, dice_by_key):
    return {"arm": arm, "seed": seed, "cases": {k: {m: v for m in METRICS} for k, v in dice_by_key.items()}}


def test_constant_difference_has_a_zero_width_interval_and_shifts_exactly():
    d = np.full((3, 5), 0.04)
    assert crossed_bootstrap(d) == pytest.approx((0.04, 0.04))
    spread = np.arange(15, dtype=float).reshape(3, 5) / 100
    low, high = crossed_bootstrap(spread)
    shifted = crossed_bootstrap(spread + 0.25)
    assert shifted == pytest.approx((low + 0.25, high + 0.25))
    assert low < spread.mean() < high


def test_one_seed_bootstrap_matches_scipys_percentile_bootstrap():
    values = np.sin(np.arange(40) * 1.7) * 0.1 + 0.02  # fixed, irregular differences of 40 patients
    low, high = crossed_bootstrap(values[None, :])
    reference = stats.bootstrap(
        (values,), np.mean, method="percentile", n_resamples=10_000, random_state=1
    ).confidence_interval
    standard_error = values.std(ddof=1) / np.sqrt(values.size)
    assert low == pytest.approx(reference.low, abs=0.1 * standard_error)
    assert high == pytest.approx(reference.high, abs=0.1 * standard_error)


def test_resampling_seeds_widens_the_interval_when_seeds_disagree():
    patients = np.linspace(-0.01, 0.01, 6)
    agree = np.stack([patients + 0.05] * 3)
    disagree = np.stack([patients + 0.05, patients - 0.05, patients + 0.15])
    assert np.ptp(crossed_bootstrap(disagree)) > 5 * np.ptp(crossed_bootstrap(agree))


def test_t_interval_matches_scipy_over_the_seed_means():
    d = np.array([[0.1, 0.3], [-0.2, 0.0], [0.05, 0.15], [0.4, 0.2]])
    reference = stats.ttest_1samp(d.mean(axis=1), 0.0).confidence_interval(0.95)
    assert t_interval(d) == pytest.approx((reference.low, reference.high))
    assert all(np.isnan(t_interval(d[:1])))


def test_differences_pair_seeds_and_patients_and_average_a_patients_protocols():
    results = [
        run("dice_ce", 0, {"p1": 0.5, "p2": 0.6, "p1@3mm_quarter_dose": 0.4, "p2@3mm_quarter_dose": 0.2}),
        run("dice_ce", 1, {"p1": 0.7, "p2": 0.6, "p1@3mm_quarter_dose": 0.5, "p2@3mm_quarter_dose": 0.3}),
        run("dice_ce", 2, {"p1": 0.1, "p2": 0.1, "p1@3mm_quarter_dose": 0.1, "p2@3mm_quarter_dose": 0.1}),
        run("ba", 1, {"p1": 0.75, "p2": 0.5, "p1@3mm_quarter_dose": 0.75, "p2@3mm_quarter_dose": 0.5}),
        run("ba", 0, {"p1": 0.5, "p2": 0.7, "p1@3mm_quarter_dose": 0.6, "p2@3mm_quarter_dose": 0.2}),
    ]
    d, seeds = difference_matrix(results, "ba", "dice_ce", "dice", PROTOCOLS, PROTOCOLS)
    assert seeds == [0, 1]  # seed 2 has no "ba" run
    np.testing.assert_allclose(d, [[0.1, 0.05], [0.15, 0.05]])
    d_demo, _ = difference_matrix(results, "ba", "dice_ce", "dice", PROTOCOLS[:1], PROTOCOLS)
    np.testing.assert_allclose(d_demo, [[0.0, 0.1], [0.05, -0.1]])
    summary = paired_summary(results, "dice_ce", ("dice",), PROTOCOLS)
    assert set(summary) == {"ba"} and set(summary["ba"]) == {"demo", "3mm_quarter_dose", "pooled"}
    pooled = summary["ba"]["pooled"]["dice"]
    assert pooled["mean"] == pytest.approx(0.0875) and pooled["seeds_better"] == 2 and pooled["patients"] == 2
    demo = summary["ba"]["demo"]["dice"]
    assert demo["mean"] == pytest.approx(0.0125) and demo["seeds_better"] == 1


def test_protocol_runs_keep_one_protocols_scans_under_the_patient_id():
    results = [run("a", 0, {"p1": 0.5, "p2": 0.7, "p1@3mm_quarter_dose": 0.1, "p2@3mm_quarter_dose": 0.3})]
    (demo,) = protocol_runs(results, "demo", PROTOCOLS)
    (low_dose,) = protocol_runs(results, "3mm_quarter_dose", PROTOCOLS)
    assert set(demo["cases"]) == set(low_dose["cases"]) == {"p1", "p2"}
    assert demo["mean"]["dice"] == pytest.approx(0.6) and low_dose["mean"]["dice"] == pytest.approx(0.2)
