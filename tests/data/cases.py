"""Small synthetic NIfTI cases for the data tests (synth output layout).

A chest-like cylinder of soft tissue (HU ≈ 40 + noise) in air (-1000) with a frame of
exact zeros (scanner padding, cropped away), and three coronary-like tubes of
different lengths (HU 35 + noise) as the binary label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from syncas_jax.common.nifti import volume_from_array, write_volume

SHAPE = (8, 48, 48)
SPACING = (2.0, 0.5, 0.5)


def tube_mask(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """uint8 (Z, Y, X) mask of three disjoint tubes (long, medium, short)."""
    z, y, x = np.indices(shape)
    long_tube = (y - 18) ** 2 + (x - 16) ** 2 <= 6.5
    medium = ((y - 32) ** 2 + (x - 30 - z) ** 2 <= 5) & (z >= 1) & (z < shape[0] - 2)
    short = ((y - 14) ** 2 + (x - 34) ** 2 <= 4) & (z >= 2) & (z < 5)
    return (long_tube | medium | short).astype(np.uint8)


def phantom_views(label: np.ndarray, views: int = 2, seed: int = 0) -> list[np.ndarray]:
    """int16 HU views differing only in noise; zero frame two voxels wide in y and x."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(label.shape)
    cy, cx = (label.shape[1] - 1) / 2, (label.shape[2] - 1) / 2
    body = ((yy - cy) / (label.shape[1] * 0.42)) ** 2 + ((xx - cx) / (label.shape[2] * 0.45)) ** 2 <= 1
    out = []
    for _ in range(views):
        hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, label.shape)
        hu[label > 0] = 35 + rng.normal(0, 5, int(label.sum()))
        hu[:, :2] = 0
        hu[:, -2:] = 0
        hu[:, :, :2] = 0
        hu[:, :, -2:] = 0
        out.append(np.rint(hu).astype(np.int16))
    return out


def write_case(
    folder: Path,
    case_id: str,
    *,
    views: int = 2,
    shape: tuple[int, int, int] = SHAPE,
    spacing: tuple[float, float, float] = SPACING,
    label: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Write `{case_id}.view{k}.img.nii.gz` and `{case_id}.label.nii.gz`; return (HU views, label)."""
    label = tube_mask(shape) if label is None else label
    arrays = phantom_views(label, views, seed)
    affine = np.array([[-spacing[2], 0, 0, 120.0], [0, -spacing[1], 0, 80.0], [0, 0, spacing[0], -300.0], [0, 0, 0, 1]])
    for k, hu in enumerate(arrays):
        write_volume(hu, folder / f"{case_id}.view{k}.img.nii.gz", volume_from_array(hu, spacing, affine))
    write_volume(label, folder / f"{case_id}.label.nii.gz", volume_from_array(label, spacing, affine), np.uint8)
    return arrays, label
