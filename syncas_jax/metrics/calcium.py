"""Coronary calcium: Agatston score of a CT image inside a mask (design §7)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from syncas_jax.metrics.masks import as_mask, bounding_box

AGATSTON_THRESHOLD_HU = 130.0
AGATSTON_MIN_AREA_MM2 = 1.0
AGATSTON_WEIGHT_EDGES_HU = (200.0, 300.0, 400.0)  # weight 1 below 200, 2, 3, 4 from 400 HU


def agatston_score(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Agatston calcium score of the (Z, Y, X) CT `image_hu` (HU) inside `mask`.

    Per axial slice, lesions are 8-connected 2D components of (mask & HU >= 130) with area
    >= 1 mm^2 (area = pixels x spacing_y x spacing_x); each scores area x weight, weight
    1/2/3/4 for a peak HU in [130, 200) / [200, 300) / [300, 400) / >= 400. The sum over
    slices is scaled by slice thickness / 3 mm (thickness = spacing_z). Empty mask -> 0.
    """
    image_hu = np.asarray(image_hu)
    mask = as_mask(mask)
    if image_hu.shape != mask.shape:
        raise ValueError(f"image shape {image_hu.shape} differs from mask shape {mask.shape}")
    box = bounding_box(mask)
    if box is None:
        return 0.0
    image_hu, mask = image_hu[box], mask[box]
    candidate = mask & (image_hu >= AGATSTON_THRESHOLD_HU)
    if not candidate.any():
        return 0.0
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = True  # 8-connected within a slice, never across slices
    labels, count = ndimage.label(candidate, structure=in_plane)
    ids = labels[candidate]
    pixels = np.bincount(ids, minlength=count + 1)[1:]
    peak = np.full(count + 1, -np.inf)
    np.maximum.at(peak, ids, image_hu[candidate].astype(np.float64))
    pixel_area = float(spacing[1]) * float(spacing[2])
    area = pixels * pixel_area
    weight = np.digitize(peak[1:], AGATSTON_WEIGHT_EDGES_HU) + 1
    keep = area >= AGATSTON_MIN_AREA_MM2 - 1e-9  # tolerate rounding of area = 1 mm^2
    return float(np.sum(area[keep] * weight[keep]) * float(spacing[0]) / 3.0)
