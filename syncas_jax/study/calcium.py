"""The calcium agreement study: Agatston from a model's predicted mask against an ideal reader (design §13).

Held-out phantoms (anatomy never trained on) are rendered as a scanner shows them with calcified
plaques inserted before the acquisition, the calcium loads cycling none / mild / moderate / severe
(`synth --realistic --calcium-load cycle`), so the set spans the four risk categories. Per scan:

* **ideal reader**: the clinical lesion rule (`syncas_jax.metrics.calcium`) applied through the
  scan's calcium lesion map (every inserted calcified plaque, valued with its artery): every lesion,
  whole, at the HU the acquisition gave it;
* **model**: the same rule through the model's predicted mask, arteries labelled from its geometry
  (`syncas_jax.calcium.arteries`), as `infer --report` computes it;
* **true lumen**: the same rule through the phantom's true coronary mask and artery map (what a
  perfect segmentation would report);
* the score the predicted mask takes from structures that are not inserted coronary calcium
  (components that touch no lesion-map voxel: bone, aortic wall, noise);
* the per-voxel artery accuracy of the geometric labelling on the predicted mask.

Agreement over the scans: linearly weighted Cohen κ over the four risk categories, ICC(2,1) of the
Agatston scores (two-way random effects, absolute agreement, single rater; Shrout & Fleiss 1979),
Bland–Altman bias and 95 % limits of agreement, and the same ICC per artery. Pure functions here;
`python -m syncas_jax.study --calcium` drives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from syncas_jax.calcium.arteries import artery_accuracy
from syncas_jax.common.arteries import ARTERIES
from syncas_jax.common.nifti import Volume
from syncas_jax.data.orientation import to_canonical
from syncas_jax.metrics.calcium import (
    AGATSTON_SLICE_MM,
    IN_PLANE,
    RISK_CATEGORIES,
    CalciumScore,
    agatston_weight,
    calcium_score,
    lesion_maps,
)


def weighted_kappa(a: Sequence[int], b: Sequence[int], categories: int) -> float:
    """Cohen's κ of two raters' ordinal category indices (0 … categories−1), linear disagreement weights |i−j|.

    1 − Σ w·observed / Σ w·expected (expected from the two raters' marginals); nan when the expected
    disagreement is 0 (both raters use one and the same category throughout)."""
    a, b = np.asarray(a, int), np.asarray(b, int)
    observed = np.zeros((categories, categories))
    np.add.at(observed, (a, b), 1.0)
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    weights = np.abs(np.subtract.outer(np.arange(categories), np.arange(categories))).astype(float)
    disagreement = float((weights * expected).sum())
    return float("nan") if disagreement == 0 else 1.0 - float((weights * observed).sum()) / disagreement


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) of an (n targets, k raters) table: two-way random effects, absolute agreement, single rater.

    (MS_rows − MS_error) / (MS_rows + (k−1)·MS_error + k·(MS_cols − MS_error)/n), Shrout & Fleiss (1979)."""
    x = np.asarray(ratings, np.float64)
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(0) - grand) ** 2).sum()
    ss_error = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows, ms_cols, ms_error = ss_rows / (n - 1), ss_cols / (k - 1), ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float("nan") if denominator == 0 else float((ms_rows - ms_error) / denominator)


def bland_altman(reference: Sequence[float], test: Sequence[float]) -> tuple[float, float, float]:
    """(bias, lower, upper): mean of test − reference and bias ∓ 1.96 × their sample standard deviation."""
    difference = np.asarray(test, np.float64) - np.asarray(reference, np.float64)
    bias = float(difference.mean())
    spread = 1.96 * float(difference.std(ddof=1)) if len(difference) > 1 else 0.0
    return bias, bias - spread, bias + spread


def score_outside(image_hu: np.ndarray, mask: np.ndarray, lesions: np.ndarray, spacing: Sequence[float]) -> float:
    """Agatston the rule gives through `mask` to components that touch no voxel of the lesion map (Z, Y, X)."""
    weights, _ = lesion_maps(image_hu, mask, spacing)
    components, count = ndimage.label(weights > 0, structure=IN_PLANE)
    if count == 0:
        return 0.0
    touches = np.zeros(count + 1, bool)
    touches[np.unique(components[(components > 0) & (lesions > 0)])] = True
    stray = (components > 0) & ~touches[components]
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    return float(weights[stray].sum()) * pixel_mm2 * float(spacing[0]) / AGATSTON_SLICE_MM


@dataclass(frozen=True)
class CaseCalcium:
    """One scan's readings: Agatston, risk category and per-artery Agatston per reader (ideal, model, lumen), the
    score the predicted mask took from non-coronary structures, the artery accuracy on the predicted mask, and how many
    bright structures the bone/aorta rule left out of the model's reading with the Agatston they would have added."""

    case: str
    agatston: dict[str, float]
    category: dict[str, str]
    per_artery: dict[str, dict[str, float]]
    non_coronary: float
    artery_accuracy: float
    excluded: int
    excluded_score: float


def case_calcium(
    case: str,
    scan: Volume,
    predicted: Volume,
    predicted_arteries: Volume,
    lesions: Volume,
    lumen: Volume,
    arteries: Volume,
) -> CaseCalcium:
    """Read one scan three ways (module docstring); every volume on the scan's grid (any layout).

    predicted_arteries: the predicted mask's artery map as `infer --arteries` wrote it (the one its report uses)."""
    canonical = to_canonical(scan)[0]
    hu, spacing = np.asarray(canonical.array, np.float32), canonical.spacing
    pred, pred_arteries, lesion_map, lumen_mask, true_arteries = (
        np.asarray(to_canonical(v)[0].array) for v in (predicted, predicted_arteries, lesions, lumen, arteries)
    )
    pred_arteries = pred_arteries.astype(np.uint8)
    scores: dict[str, CalciumScore] = {
        "ideal": calcium_score(hu, lesion_map > 0, spacing, lesion_map.astype(np.uint8)),
        "model": calcium_score(hu, pred > 0, spacing, pred_arteries),
        "lumen": calcium_score(hu, lumen_mask > 0, spacing, true_arteries.astype(np.uint8)),
    }
    truth = np.where(lumen_mask > 0, true_arteries, 0)
    return CaseCalcium(
        case=case,
        agatston={r: s.agatston for r, s in scores.items()},
        category={r: s.risk_category for r, s in scores.items()},
        per_artery={r: {a: s.arteries[a].agatston for a in ARTERIES} for r, s in scores.items()},
        non_coronary=score_outside(hu, pred > 0, lesion_map, spacing),
        artery_accuracy=artery_accuracy(np.where(pred > 0, pred_arteries, 0), truth),
        excluded=len(scores["model"].excluded),
        excluded_score=excluded_score(scores["model"], spacing),
    )


def excluded_score(score: CalciumScore, spacing: Sequence[float]) -> float:
    """The Agatston the structures `score` excluded as bone or aortic wall would have added (area × weight × Δz/3)."""
    return float(sum(e.area_mm2 * agatston_weight(e.peak_hu) for e in score.excluded)) * spacing[0] / AGATSTON_SLICE_MM


def agreement(cases: Sequence[CaseCalcium], reader: str) -> dict[str, float]:
    """κ (linear, risk categories), ICC(2,1), Bland–Altman (bias, limits) and per-artery ICC of `reader` vs ideal."""
    index = {name: i for i, name in enumerate(RISK_CATEGORIES)}
    ideal = [c.agatston["ideal"] for c in cases]
    test = [c.agatston[reader] for c in cases]
    bias, low, high = bland_altman(ideal, test)
    out = {
        "kappa_linear": weighted_kappa([index[c.category["ideal"]] for c in cases],
                                       [index[c.category[reader]] for c in cases], len(RISK_CATEGORIES)),
        "icc_2_1": icc_2_1(np.stack([ideal, test], 1)),
        "bias": bias, "limits_low": low, "limits_high": high,
        "category_agreement": float(np.mean([c.category["ideal"] == c.category[reader] for c in cases])),
    }  # fmt: skip
    for artery in ARTERIES:
        pairs = np.array([[c.per_artery["ideal"][artery], c.per_artery[reader][artery]] for c in cases])
        out[f"icc_{artery}"] = icc_2_1(pairs)
    return out


def summarize(cases: Sequence[CaseCalcium]) -> dict:
    """JSON-able: per-case readings, agreement of the model and of the true lumen with the ideal reader."""
    accuracy = [c.artery_accuracy for c in cases if np.isfinite(c.artery_accuracy)]
    return {
        "cases": [asdict(c) for c in cases],
        "model": agreement(cases, "model"),
        "lumen": agreement(cases, "lumen"),
        "non_coronary_mean": float(np.mean([c.non_coronary for c in cases])),
        "non_coronary_max": float(np.max([c.non_coronary for c in cases])),
        "excluded_mean": float(np.mean([c.excluded for c in cases])),
        "excluded_score_mean": float(np.mean([c.excluded_score for c in cases])),
        "excluded_score_max": float(np.max([c.excluded_score for c in cases])),
        "artery_accuracy_mean": float(np.mean(accuracy)) if accuracy else float("nan"),
        "artery_accuracy_min": float(np.min(accuracy)) if accuracy else float("nan"),
    }


def format_report(summary: dict) -> str:
    """Markdown: the per-case table, then the agreement table (model and true lumen vs the ideal reader)."""
    lines = ["| case | ideal | model | true lumen | ideal category | model category | non-coronary | excluded "
             "(would add) | artery acc. |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in summary["cases"]:
        a, k = c["agatston"], c["category"]
        lines.append(f"| {c['case']} | {a['ideal']:.1f} | {a['model']:.1f} | {a['lumen']:.1f} | {k['ideal']} | "
                     f"{k['model']} | {c['non_coronary']:.1f} | {c['excluded']} ({c['excluded_score']:.1f}) | "
                     f"{c['artery_accuracy']:.3f} |")  # fmt: skip
    lines += ["", "| reader vs ideal | κ (linear) | ICC(2,1) | bias | 95 % limits | same category | "
              + " | ".join(f"ICC {a}" for a in ARTERIES) + " |", "|---" * (6 + len(ARTERIES)) + "|"]  # fmt: skip
    for reader, name in (("model", "model's mask"), ("lumen", "true lumen mask")):
        g = summary[reader]
        lines.append(f"| {name} | {g['kappa_linear']:.3f} | {g['icc_2_1']:.3f} | {g['bias']:+.1f} | "
                     f"{g['limits_low']:+.1f} … {g['limits_high']:+.1f} | {g['category_agreement']:.0%} | "
                     + " | ".join(f"{g[f'icc_{a}']:.3f}" for a in ARTERIES) + " |")  # fmt: skip
    lines += ["", f"Non-coronary score taken by the model's mask: mean {summary['non_coronary_mean']:.1f}, "
              f"max {summary['non_coronary_max']:.1f} Agatston per scan; the bone/aorta rule left out "
              f"{summary['excluded_mean']:.1f} structures per scan that would have added "
              f"{summary['excluded_score_mean']:.1f} (max {summary['excluded_score_max']:.1f}). "
              "Artery labelling of the predicted mask: "
              f"{summary['artery_accuracy_mean']:.3f} per-voxel accuracy (min {summary['artery_accuracy_min']:.3f})."]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Scatter (model and true lumen vs ideal Agatston, log-log with the category edges) and Bland–Altman."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from syncas_jax.common.files import atomic_path

    cases = summary["cases"]
    ideal = np.array([c["agatston"]["ideal"] for c in cases])
    fig, (scatter, ba) = plt.subplots(1, 2, figsize=(10, 4.4), facecolor="white")
    top = max(10.0, float(max(max(c["agatston"].values()) for c in cases))) * 1.5
    for reader, colour in (("model", "tab:red"), ("lumen", "tab:blue")):
        values = np.array([c["agatston"][reader] for c in cases])
        g = summary[reader]
        scatter.scatter(ideal + 1, values + 1, s=22, color=colour, label=f"{reader} (κ {g['kappa_linear']:.2f})")
        ba.scatter((ideal + values) / 2, values - ideal, s=22, color=colour, label=reader)
        for level in (g["bias"], g["limits_low"], g["limits_high"]):
            ba.axhline(level, color=colour, lw=0.8, ls="-" if level == g["bias"] else "--")
    scatter.plot([1, top], [1, top], color="grey", lw=0.8)
    for edge in (100, 400):
        scatter.axvline(edge + 1, color="grey", lw=0.5, ls=":")
        scatter.axhline(edge + 1, color="grey", lw=0.5, ls=":")
    scatter.set(xscale="log", yscale="log", xlabel="ideal reader Agatston + 1", ylabel="Agatston + 1",
                title="Agatston per scan")  # fmt: skip
    scatter.legend(fontsize=8)
    ba.set(xlabel="mean of the two", ylabel="reader − ideal", title="Bland–Altman")
    ba.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
