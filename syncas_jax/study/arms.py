"""The study's arms, sizes and bookkeeping: what each arm changes, and the table and plot of the results.

Arms (all on the same phantoms, with the same budget and seeds):
  dice_ce        Dice + CE only (contrastive_weight 0)
  plain          + plain voxel contrastive loss (branch_aware false)
  branch_aware   + branch-aware contrastive loss (the method)
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from syncas_jax.common.files import atomic_path, write_text
from syncas_jax.demo.dataset import PhantomSet

ARMS: dict[str, dict[str, Any]] = {
    "dice_ce": {"contrastive_weight": 0.0},
    "plain": {"branch_aware": False},
    "branch_aware": {"branch_aware": True},
    # Branch-aware, but both views rendered inside the train step from the CTA cache (design §10)
    # instead of the two stored views; opt-in (--arms ... online): its steps cost more on a CPU.
    "online": {"branch_aware": True, "synthesis": "online"},
}
DEFAULT_ARMS = ("dice_ce", "plain", "branch_aware")
METRICS = ("dice", "cldice", "hd95_mm", "recall", "fp")  # per held-out case; fp = false-positive voxels


@dataclass(frozen=True)
class StudySize:
    """phantoms: the data set; config: overrides on top of the shipped `demo` config (the budget of every arm);
    protocols: the held-out scans' acquisitions (names of `demo.dataset.PROTOCOLS`), each scored."""

    phantoms: PhantomSet
    config: dict[str, Any] = field(default_factory=dict)
    protocols: tuple[str, ...] = ("demo",)


SIZES: dict[str, StudySize] = {
    # 2-core CPU: the demo's phantoms and recipe at a shorter budget (16×48×48 patches, 192 steps),
    # so 3 arms × 3 seeds fit in an hour.
    "cpu": StudySize(PhantomSet(8, 3, (48, 448, 448), (2.0, 0.4, 0.4)), {"patch_size": [16, 48, 48], "num_epochs": 12}),
    # The demo's phantoms (training on the same 8) and recipe as they are (480 steps); 6 held-out
    # patients, each scanned under the demo's protocol and 3 mm slices at a quarter of the dose.
    "demo": StudySize(
        PhantomSet(8, 6, (48, 448, 448), (2.0, 0.4, 0.4)), {}, ("demo", "3mm_quarter_dose")
    ),
    # One accelerator: the reference network, patch and batch on larger phantoms.
    "gpu": StudySize(
        PhantomSet(16, 6, (96, 448, 448), (1.5, 0.35, 0.35)),
        {
            "ngf": 16, "depth": 4, "patch_size": [32, 224, 224], "batch_size": 4, "spacing": [1.5, 0.35, 0.35],
            "num_anchor": 512, "num_epochs": 60, "num_iterations_per_epoch": 40, "num_val_iterations_per_epoch": 4,
            "augmentated": True, "test_every": 1000, "workers": 4,
        },
        ("demo", "3mm_quarter_dose"),
    ),
    # Smoke test of the study itself (tests/study).
    "tiny": StudySize(
        PhantomSet(3, 1, (24, 64, 64), (2.0, 1.5, 1.5)),
        {
            "ngf": 4, "depth": 3, "patch_size": [16, 32, 32], "spacing": [2.0, 1.5, 1.5], "num_epochs": 1,
            "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "num_anchor": 32, "test_every": 1000,
        },
        ("demo", "3mm_quarter_dose"),
    ),
}  # fmt: skip


def summarize_runs(
    results: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS
) -> dict[str, dict[str, dict[str, float]]]:
    """{arm: {metric: {"mean", "std", "n"}}} over seeds, of each run's mean over its held-out cases."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        table[arm] = {}
        for metric in metrics:
            values = np.array([r["mean"][metric] for r in runs], float)
            values = values[np.isfinite(values)]
            table[arm][metric] = {
                "mean": float(values.mean()) if values.size else math.nan,
                "std": float(values.std()) if values.size else math.nan,
                "n": int(values.size),
            }
    return table


def run_mean(cases: dict[str, dict[str, float]], metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean over a run's held-out cases of each metric (finite values only)."""
    out = {}
    for metric in metrics:
        values = np.array([c[metric] for c in cases.values()], float)
        values = values[np.isfinite(values)]
        out[metric] = float(values.mean()) if values.size else math.nan
    return out


def format_table(table: dict[str, dict[str, dict[str, float]]], metrics: Sequence[str] = METRICS) -> str:
    """Markdown table: one row per arm, mean ± std over seeds."""
    header = "| arm | " + " | ".join(metrics) + " | seeds |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    digits_of = {"fp": 0, "hd95_mm": 2, "agatston_abs_diff": 1}
    for arm, row in table.items():
        cells = []
        for metric in metrics:
            mean, std = row[metric]["mean"], row[metric]["std"]
            digits = digits_of.get(metric, 3)
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {row['dice']['n']} |")
    return "\n".join(lines)


def table_csv(results: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> str:
    """One row per (arm, seed, case) and per (arm, seed) mean."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "seed", "case", *metrics])
    for r in results:
        for case, values in r["cases"].items():
            writer.writerow([r["arm"], r["seed"], case, *(values[m] for m in metrics)])
        writer.writerow([r["arm"], r["seed"], "mean", *(r["mean"][m] for m in metrics)])
    return buffer.getvalue()


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Dice and clDice per arm: bars at the mean over seeds, one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("dice", "cldice")):
        for i, arm in enumerate(arms):
            values = [r["mean"][metric] for r in results if r["arm"] == arm]
            ax.bar(i, np.mean(values), color="0.8", edgecolor="0.3")
            ax.plot([i] * len(values), values, "ko", markersize=4)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_ylim(0, 1)
        ax.set_title(f"held-out {metric} (bar: mean over seeds, dots: seeds)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def write_csv(results: Sequence[dict[str, Any]], path: Path, metrics: Sequence[str] = METRICS) -> None:
    write_text(table_csv(results, metrics), path)


def protocol_runs(results: Sequence[dict[str, Any]], protocol: str, protocols: Sequence[str]) -> list[dict[str, Any]]:
    """The results restricted to the held-out scans of `protocol` (keys as `paired.case_key`), means recomputed."""
    from syncas_jax.study.paired import case_key, patients_of

    runs = []
    for r in results:
        keys = {p: case_key(p, protocol, protocols) for p in patients_of(r["cases"])}
        cases = {p: r["cases"][key] for p, key in keys.items() if key in r["cases"]}
        runs.append({**r, "cases": cases, "mean": run_mean(cases)})
    return runs


def format_paired(paired: dict[str, dict[str, dict[str, dict[str, float]]]], baseline: str) -> str:
    """Markdown: per arm and scope, Δ = arm − baseline of Dice and clDice with both 95 % intervals."""
    lines = [
        f"| arm − {baseline} | scans | ΔDice | 95 % bootstrap | 95 % t (seeds) | ΔclDice | 95 % bootstrap "
        "| seeds better (Dice) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, scopes in paired.items():
        for scope, row in scopes.items():
            dice, cldice = row["dice"], row["cldice"]
            lines.append(
                f"| {arm} | {scope} ({dice['seeds']} seeds × {dice['patients']}) | {dice['mean']:+.3f} "
                f"| {dice['bootstrap_low']:+.3f} … {dice['bootstrap_high']:+.3f} "
                f"| {dice['t_low']:+.3f} … {dice['t_high']:+.3f} | {cldice['mean']:+.3f} "
                f"| {cldice['bootstrap_low']:+.3f} … {cldice['bootstrap_high']:+.3f} "
                f"| {dice['seeds_better']}/{dice['seeds']} |"
            )
    return "\n".join(lines)
