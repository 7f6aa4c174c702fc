"""Coronary plaque insertion (design §1 step 3; the reference's generator is unpublished, this is ours).

Per view: the number of plaques is uniform in {0, …, 15}; each is calcified with
probability 0.65 (HU uniform in [300, 1000]) else non-calcified (HU in [50, 150]). A
plaque is an ellipsoid elongated along the vessel (cross-section semi-axis r = 0.4–0.8 ×
the local lumen radius R, half-length 1–2.5 r), centred on the vessel wall (distance R
from a centreline point, in a random direction across the vessel), so it is eccentric
and half inside the lumen. The wall around it (a shell of max(0.5 mm, one voxel) outside
the lumen, over the plaque's length, sparing earlier plaques) is set to 40 HU first. The plaque's edge is
anti-aliased over one voxel. Centrelines come from 3D skeletonisation of the coronary
mask, local radii from its Euclidean distance transform (mm), tangents from the
principal axis of nearby centreline points.

numpy only: this is per-case geometry on a few thousand voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import edt
import numpy as np
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

MAX_PLAQUES = 15
P_CALCIFIED = 0.65
CALCIFIED_HU = (300.0, 1000.0)
NONCALCIFIED_HU = (50.0, 150.0)
WALL_HU = 40.0
RADIUS_FRACTION = (0.4, 0.8)  # plaque cross-section semi-axis / lumen radius
ELONGATION = (1.0, 2.5)  # plaque half-length / cross-section semi-axis


@dataclass(frozen=True)
class Centreline:
    """Coronary centreline: voxel points (N, 3) (z, y, x), lumen radius (N,) mm, unit tangents (N, 3) in mm space."""

    points: np.ndarray
    radius_mm: np.ndarray
    tangent: np.ndarray


def coronary_centreline(mask: np.ndarray, spacing: tuple[float, float, float]) -> Centreline:
    """Skeleton points, local radii and tangents of a (Z, Y, X) binary coronary mask."""
    spacing_arr = np.asarray(spacing, np.float64)
    where = np.argwhere(mask)
    if len(where) == 0:
        empty = np.zeros((0, 3))
        return Centreline(empty.astype(np.int64), np.zeros(0), empty)
    low = np.maximum(where.min(0) - 1, 0)
    high = where.max(0) + 2
    crop = np.asarray(mask[tuple(slice(a, b) for a, b in zip(low, high))], bool)
    skeleton = skeletonize(crop)
    points = np.argwhere(skeleton)
    distance = edt.edt(crop, anisotropy=spacing, black_border=False)
    if len(points) == 0:  # a blob too small to thin: use its most central voxel
        points = np.array([np.unravel_index(np.argmax(distance), crop.shape)])
    radius = distance[tuple(points.T)]
    mm = points * spacing_arr
    tree = cKDTree(mm)
    tangent = np.zeros_like(mm)
    for i, (p, r) in enumerate(zip(mm, radius)):
        near = mm[tree.query_ball_point(p, max(3.0 * r, 2.5 * spacing_arr.max()))]
        if len(near) >= 2:
            tangent[i] = np.linalg.svd(near - near.mean(0), full_matrices=False)[2][0]
        else:
            tangent[i] = (1.0, 0.0, 0.0)
    return Centreline(points + low, radius, tangent)


def _across(tangent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector perpendicular to `tangent`."""
    while True:
        d = rng.normal(size=3)
        d -= d.dot(tangent) * tangent
        norm = np.linalg.norm(d)
        if norm > 1e-6:
            return d / norm


def insert_plaques(
    image: np.ndarray,
    mask: np.ndarray,
    centreline: Centreline,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[dict]]:
    """Insert 0–15 plaques into a (Z, Y, X) HU image; return (new float32 image, sidecar records).

    mask: the (Z, Y, X) coronary lumen; records give each plaque's centre voxel (z, y, x),
    radius (in-plane voxels and mm), half-length (mm), kind, HU and voxel count.
    """
    out = np.array(image, np.float32, copy=True)
    count = int(rng.integers(0, MAX_PLAQUES + 1))
    if len(centreline.points) == 0:
        return out, []
    spacing_arr = np.asarray(spacing, np.float64)
    pixel = float(min(spacing[1:]))
    wall = max(0.5, pixel)
    records = []
    occupied = np.zeros(out.shape, bool)  # plaque voxels, never repainted as wall
    for _ in range(count):
        i = int(rng.integers(len(centreline.points)))
        lumen = max(float(centreline.radius_mm[i]), pixel)
        tangent = centreline.tangent[i]
        calcified = bool(rng.random() < P_CALCIFIED)
        hu = float(rng.uniform(*(CALCIFIED_HU if calcified else NONCALCIFIED_HU)))
        radius = max(lumen * rng.uniform(*RADIUS_FRACTION), 0.6 * pixel)
        half_length = radius * rng.uniform(*ELONGATION)
        axis_mm = centreline.points[i] * spacing_arr
        centre_mm = axis_mm + _across(tangent, rng) * lumen

        reach = np.ceil((max(half_length, radius) + lumen + wall + pixel) / spacing_arr).astype(int)
        centre_vox = np.rint(centre_mm / spacing_arr).astype(int)
        low = np.maximum(centre_vox - reach, 0)
        high = np.minimum(centre_vox + reach + 1, out.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        grids = np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(low, high, spacing_arr)], indexing="ij")
        coords = np.stack(grids, axis=-1)  # (..., 3) mm

        # Wall shell: within `wall` outside the lumen around the axis, over the plaque's length.
        rel_axis = coords - axis_mm
        along = rel_axis @ tangent
        off_axis = np.linalg.norm(rel_axis - along[..., None] * tangent, axis=-1)
        shell = (off_axis <= lumen + wall) & (np.abs(along) <= half_length + radius) & ~mask[box] & ~occupied[box]
        out[box][shell] = WALL_HU

        rel = coords - centre_mm
        along = rel @ tangent
        across = np.linalg.norm(rel - along[..., None] * tangent, axis=-1)
        q = np.sqrt((along / half_length) ** 2 + (across / radius) ** 2)
        weight = np.clip((1.0 - q) * radius / pixel + 0.5, 0.0, 1.0)
        out[box] = (1.0 - weight) * out[box] + weight * hu
        occupied[box] |= weight > 0
        records.append(
            {
                "center_zyx": [int(c) for c in centre_vox],
                "centreline_zyx": [int(c) for c in centreline.points[i]],
                "radius_voxels": radius / pixel,
                "radius_mm": radius,
                "half_length_mm": half_length,
                "kind": "calcified" if calcified else "non-calcified",
                "hu": hu,
                "voxels": int((q <= 1.0).sum()),
            }
        )
    return out, records
