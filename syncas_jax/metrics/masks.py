"""Mask helpers shared by the metric modules: checked boolean (Z, Y, X) masks, 0/0 conventions, boxes."""

from __future__ import annotations

import numpy as np


def as_mask(mask: np.ndarray) -> np.ndarray:
    """A boolean (Z, Y, X) mask (value > 0); ValueError for anything not 3D."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask > 0


def check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as boolean masks; ValueError when their shapes differ."""
    pred, ref = as_mask(pred), as_mask(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def safe_ratio(num: float, den: float, both_empty: bool) -> float:
    """num / den; for 0/0: 1 when prediction and reference are both empty, else 0."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def bounding_box(*masks: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Smallest box holding the foreground of all (Z, Y, X) masks (None if all empty)."""
    lo, hi = [], []
    for mask in masks:
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        if zs.size == 0:
            continue
        slab = mask[zs[0] : zs[-1] + 1]
        ys, xs = np.flatnonzero(slab.any(axis=(0, 2))), np.flatnonzero(slab.any(axis=(0, 1)))
        lo.append((zs[0], ys[0], xs[0]))
        hi.append((zs[-1], ys[-1], xs[-1]))
    if not lo:
        return None
    first, last = np.min(lo, axis=0), np.max(hi, axis=0)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(first, last))  # type: ignore[return-value]
