"""Overlap metrics of boolean (Z, Y, X) masks: confusion counts, Dice, IoU, precision, recall, specificity, F1.

Empty masks: a ratio 0/0 is 1 when prediction and reference are both empty, else 0;
specificity 0/0 (reference fills the whole volume) is 1.
"""

from __future__ import annotations

import numpy as np

from syncas_jax.metrics.masks import check_pair, safe_ratio


def confusion_counts(pred: np.ndarray, ref: np.ndarray) -> dict[str, int]:
    """Voxel counts tp, fp, fn, tn of boolean (Z, Y, X) masks `pred` against `ref`."""
    pred, ref = check_pair(pred, ref)
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    fp, fn = n_pred - tp, n_ref - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision, recall, specificity and F1 (= Dice for binary masks) of (Z, Y, X) masks.

    Empty masks: see the module docstring (a ratio 0/0 is 1 when both masks are empty, else 0).
    """
    counts = confusion_counts(pred, ref)
    return overlap_from_counts(**counts)


def overlap_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Overlap metrics from confusion counts (same conventions as `overlap_metrics`)."""
    both_empty = tp + fp + fn == 0
    precision = safe_ratio(tp, tp + fp, both_empty)
    recall = safe_ratio(tp, tp + fn, both_empty)
    return {
        "dice": safe_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": safe_ratio(tp, tp + fp + fn, both_empty),
        "precision": precision,
        "recall": recall,
        "specificity": safe_ratio(tn, tn + fp, True),
        "f1": safe_ratio(2 * precision * recall, precision + recall, both_empty),
    }
