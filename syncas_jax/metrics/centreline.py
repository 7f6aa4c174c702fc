"""Topology: clDice, cl-precision and cl-recall from 3D skeletons (Shit et al. 2021)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from syncas_jax.metrics.masks import as_mask, check_pair, safe_ratio


def skeleton(mask: np.ndarray) -> np.ndarray:
    """3D skeleton (scikit-image `skeletonize`, Lee's method) of a (Z, Y, X) mask, computed on its bounding box."""
    mask = as_mask(mask)
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    from skimage.morphology import skeletonize

    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    out[box] = skeletonize(mask[box])
    return out


def cl_dice(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(clDice, cl-precision, cl-recall) of (Z, Y, X) masks (Shit et al. 2021).

    cl-precision = |skel(pred) & ref| / |skel(pred)|, cl-recall = |skel(ref) & pred| / |skel(ref)|,
    clDice = their harmonic mean. Both empty -> (1, 1, 1); one empty -> (0, 0, 0).
    """
    pred, ref = check_pair(pred, ref)
    both_empty = not pred.any() and not ref.any()
    skel_pred, skel_ref = skeleton(pred), skeleton(ref)
    precision = safe_ratio(np.count_nonzero(skel_pred & ref), np.count_nonzero(skel_pred), both_empty)
    recall = safe_ratio(np.count_nonzero(skel_ref & pred), np.count_nonzero(skel_ref), both_empty)
    return safe_ratio(2 * precision * recall, precision + recall, both_empty), precision, recall
