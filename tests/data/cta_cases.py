"""Small labelled CTA cases (the input of `synth` and of `preprocess --cta`) for the online-synthesis tests.

A chest-like slice stack: air (−1000 HU) around a body (40 HU), two lungs (label 11, −850 HU), a
ring of myocardium (118, CTA 110 HU) around a large left ventricle (120, CTA 380 HU, a wide
homogeneous region for noise statistics), a liver (5) in the lower slices and two coronary tubes
(128, CTA 400 HU) in the soft tissue beside the heart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from syncas_jax.common.nifti import volume_from_array, write_volume

SPACING = (1.5, 0.8, 0.8)
LV_CENTRE = (48, 46)  # (y, x) in a 96 × 96 slice


def cta_phantom(shape: tuple[int, int, int] = (32, 96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """(float32 HU image, uint8 label map), both (Z, Y, X); the in-plane layout scales with the shape."""
    z, y, x = np.indices(shape, dtype=np.float32)
    s = shape[1] / 96.0
    y, x = y / s, x / (shape[2] / 96.0)
    image = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.uint8)

    def paint(mask: np.ndarray, hu: float, label: int | None = None) -> None:
        image[mask] = hu
        if label is not None:
            labels[mask] = label

    paint(((y - 48) / 44.0) ** 2 + ((x - 48) / 46.0) ** 2 <= 1, 40.0)
    for cx in (20, 78):
        paint(((y - 50) / 28.0) ** 2 + ((x - cx) / 14.0) ** 2 <= 1, -850.0, 11)
    r = np.hypot(y - LV_CENTRE[0], x - LV_CENTRE[1])
    paint(r <= 25, 110.0, 118)
    paint(r <= 19, 380.0, 120)
    paint((np.hypot(y - 80, x - 50) <= 12) & (z < shape[0] * 0.4), 100.0, 5)
    paint(np.hypot(y - 22, x - 70) <= 2.2, 400.0, 128)
    paint((np.hypot(y - 74, x - 74) <= 1.8) & (z > 3) & (z < shape[0] - 4), 400.0, 128)
    return image, labels


def write_cta_case(
    folder: Path,
    case_id: str,
    shape: tuple[int, int, int] = (32, 96, 96),
    spacing: tuple[float, float, float] = SPACING,
    labels: np.ndarray | None = None,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Write `{case_id}.img.nii.gz` (int16 HU) and `{case_id}.label.nii.gz` (uint8); return (image, labels)."""
    default_image, default_labels = cta_phantom(shape)
    image = default_image if image is None else image
    labels = default_labels if labels is None else labels
    folder.mkdir(parents=True, exist_ok=True)
    like = volume_from_array(image, spacing)
    write_volume(image, folder / f"{case_id}.img.nii.gz", like, np.int16 if np.all(np.isfinite(image)) else np.float32)
    write_volume(labels, folder / f"{case_id}.label.nii.gz", volume_from_array(labels, spacing), np.uint8)
    return image, labels
