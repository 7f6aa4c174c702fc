"""Segmentation metrics on boolean (z, y, x) masks: overlap, surface distance in mm, clDice, Agatston.

Pure numpy functions: masks are boolean arrays of shape (Z, Y, X) (any array is cast with
`> 0`), `spacing` is the (z, y, x) voxel size in mm, images are in HU.

Modules: `overlap` (Dice, IoU, ...), `surface` (HD95, MSD in mm), `centreline` (clDice),
`calcium` (Agatston, volume score, lesions); `case_metrics` runs them all on one case and
`summarize` gives mean ± std over cases.

Conventions for empty masks (nothing is ever NaN):

* both empty: Dice = IoU = F1 = precision = recall = specificity = 1, HD95 = MSD = 0,
  clDice = cl-precision = cl-recall = 1 (prediction and reference agree perfectly);
* one empty: Dice = IoU = F1 = 0, precision (empty prediction) or recall (empty reference)
  = 0, HD95 = MSD = inf (like surface-distance; written as null in JSON), clDice and its
  parts = 0;
* in general a ratio 0/0 is 1 when prediction and reference are both empty, else 0;
  specificity 0/0 (reference fills the whole volume) is 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from syncas_jax.metrics.calcium import agatston_score, calcium_score
from syncas_jax.metrics.centreline import cl_dice, skeleton
from syncas_jax.metrics.masks import check_pair
from syncas_jax.metrics.overlap import confusion_counts, overlap_from_counts, overlap_metrics
from syncas_jax.metrics.surface import surface_distance_arrays, surface_distances

METRIC_KEYS = (
    "dice", "iou", "precision", "recall", "specificity", "f1",
    "tp", "fp", "fn", "tn",
    "hd95_mm", "msd_mm",
    "cldice", "cl_precision", "cl_recall",
)  # fmt: skip
AGATSTON_KEYS = ("agatston_ref", "agatston_pred")

__all__ = [
    "AGATSTON_KEYS", "METRIC_KEYS", "agatston_score", "calcium_score", "case_metrics", "cl_dice", "confusion_counts",
    "overlap_from_counts", "overlap_metrics", "skeleton", "summarize", "surface_distance_arrays", "surface_distances",
]  # fmt: skip


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    image_hu: np.ndarray | None = None,
) -> dict[str, float | int]:
    """All metrics of one case: keys METRIC_KEYS, plus AGATSTON_KEYS when `image_hu` is given.

    pred, ref: (Z, Y, X) masks (foreground = value > 0); spacing: (z, y, x) mm; image_hu: the
    CT of the case in HU, same shape, Z the axial slice axis (reorient files first:
    `syncas_jax.data.orientation.to_canonical`). Distances in mm; may hold inf (see module docstring).
    """
    pred, ref = check_pair(pred, ref)
    counts = confusion_counts(pred, ref)
    result: dict[str, float | int] = {**overlap_from_counts(**counts), **counts}
    result["hd95_mm"], result["msd_mm"] = surface_distances(pred, ref, spacing)
    result["cldice"], result["cl_precision"], result["cl_recall"] = cl_dice(pred, ref)
    if image_hu is not None:
        result["agatston_ref"] = agatston_score(image_hu, ref, spacing)
        result["agatston_pred"] = agatston_score(image_hu, pred, spacing)
    return {key: result[key] for key in (*METRIC_KEYS, *AGATSTON_KEYS) if key in result}


def summarize(cases: Sequence[Mapping[str, float | int]]) -> dict[str, dict[str, float | int | None]]:
    """Mean, std (population, ddof 0) and count n of each metric over the finite per-case values.

    Non-finite values (inf distances of a case with one empty mask) are left out and show as
    n smaller than the number of cases; mean/std are None when no value is finite.
    """
    keys: list[str] = []
    for case in cases:
        keys.extend(k for k in case if k not in keys)
    summary: dict[str, dict[str, float | int | None]] = {}
    for key in keys:
        values = np.array([float(c[key]) for c in cases if key in c], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[key] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "n": int(finite.size),
        }
    return summary
