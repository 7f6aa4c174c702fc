"""Coronary calcium inside a mask: Agatston score, volume score, lesions, risk category (design §7, §11).

The one computation behind `python -m syncas_jax.calcium`, `infer --report` and evaluate's
Agatston columns. Arrays are (Z, Y, X) with Z the axial slice axis (callers reorient files
first: `syncas_jax.data.orientation`); spacing is (z, y, x) mm from the file.

* A lesion is an 8-connected 2D component, within one axial slice, of (mask & HU ≥ 130) with
  area ≥ 1 mm² (area = pixels × spacing_y × spacing_x).
* Its Agatston score = area × weight × spacing_z / 3 mm, weight 1/2/3/4 for a peak HU in
  [130, 200) / [200, 300) / [300, 400) / ≥ 400: the classic definition on 3 mm slices, scaled by
  the slice increment so thinner (or overlapping) reconstructions score the same calcium alike.
* Agatston score: the sum over lesions. Volume score: mm³ of the lesion voxels (all ≥ 130 HU),
  voxels × spacing_z × spacing_y × spacing_x. Lesion count: the number of lesions (per slice, as
  in the table). Risk category: "0", "1-99" (any calcium below 100, including scores under 1),
  "100-399" or ">=400".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from syncas_jax.metrics.masks import as_mask, bounding_box

AGATSTON_THRESHOLD_HU = 130.0
AGATSTON_MIN_AREA_MM2 = 1.0
AGATSTON_WEIGHT_EDGES_HU = (200.0, 300.0, 400.0)  # weight 1 below 200, 2, 3, 4 from 400 HU
AGATSTON_SLICE_MM = 3.0
RISK_EDGES = (100.0, 400.0)
RISK_CATEGORIES = ("0", "1-99", "100-399", ">=400")
LESION_FIELDS = ("slice", "row", "column", "area_mm2", "peak_hu", "weight", "score", "volume_mm3")


@dataclass(frozen=True)
class Lesion:
    """One scored lesion: axial slice index (z), centroid row (y) and column (x) in voxels, area mm², peak HU,
    weight 1-4, Agatston score (scaled to 3 mm) and volume mm³."""

    slice: int
    row: float
    column: float
    area_mm2: float
    peak_hu: float
    weight: int
    score: float
    volume_mm3: float


@dataclass(frozen=True)
class CalciumScore:
    """agatston (sum of lesion scores), volume_mm3, lesion_count, risk_category, lesions (by slice, then row)."""

    agatston: float
    volume_mm3: float
    lesion_count: int
    risk_category: str
    lesions: tuple[Lesion, ...]

    def to_dict(self) -> dict:
        """JSON-able: keys agatston, volume_mm3, lesion_count, risk_category, lesions (list of dicts)."""
        out = asdict(self)
        out["lesions"] = [asdict(lesion) for lesion in self.lesions]
        return out


def risk_category(agatston: float) -> str:
    """"0" for no calcium, "1-99" below 100, "100-399" below 400, else ">=400"."""
    if agatston <= 0:
        return RISK_CATEGORIES[0]
    return RISK_CATEGORIES[1 + int(np.searchsorted(RISK_EDGES, agatston, side="right"))]


def calcium_score(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> CalciumScore:
    """The calcium inside `mask` of the (Z, Y, X) CT `image_hu` (HU) with (z, y, x) `spacing` mm.

    See the module docstring for the definitions. An empty mask (or no voxel ≥ 130 HU) gives zeros.
    """
    found = _scored_components(image_hu, mask, spacing)
    lesions = () if found is None else found.lesions
    agatston = float(sum(lesion.score for lesion in lesions))
    volume = float(sum(lesion.volume_mm3 for lesion in lesions))
    return CalciumScore(agatston, volume, len(lesions), risk_category(agatston), lesions)


def lesion_weight_map(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """uint8 (Z, Y, X): the Agatston weight (1-4) of every voxel of a scored lesion, 0 elsewhere."""
    out = np.zeros(np.shape(image_hu), np.uint8)
    found = _scored_components(image_hu, mask, spacing)
    if found is not None:
        lookup = np.zeros(len(found.weight) + 1, np.uint8)
        lookup[1:] = np.where(found.keep, found.weight, 0)
        out[found.box] = lookup[found.labels]
    return out


@dataclass(frozen=True)
class _Components:
    box: tuple[slice, slice, slice]
    labels: np.ndarray  # int (box shape): component id per candidate voxel, 0 elsewhere
    weight: np.ndarray  # (count,) weights 1-4
    keep: np.ndarray  # (count,) bool: area >= 1 mm^2
    lesions: tuple[Lesion, ...]


def _scored_components(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> _Components | None:
    """The 2D components of (mask & HU >= 130) in the mask's box and the scored ones as Lesions; None if none."""
    image_hu = np.asarray(image_hu)
    mask = as_mask(mask)
    if image_hu.shape != mask.shape:
        raise ValueError(f"image shape {image_hu.shape} differs from mask shape {mask.shape}")
    sz, sy, sx = (float(s) for s in spacing)
    box = bounding_box(mask)
    if box is None:
        return None
    hu = image_hu[box]
    candidate = mask[box] & (hu >= AGATSTON_THRESHOLD_HU)
    if not candidate.any():
        return None
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = True  # 8-connected within a slice, never across slices
    labels, count = ndimage.label(candidate, structure=in_plane)
    z, y, x = np.nonzero(candidate)
    ids = labels[z, y, x]
    pixels = np.bincount(ids, minlength=count + 1)[1:]
    peak = np.full(count + 1, -np.inf)
    np.maximum.at(peak, ids, hu[z, y, x].astype(np.float64))
    peak = peak[1:]
    slices = np.zeros(count + 1, np.int64)
    slices[ids] = z  # every voxel of a component lies on one slice
    rows = np.bincount(ids, weights=y, minlength=count + 1)[1:] / pixels
    columns = np.bincount(ids, weights=x, minlength=count + 1)[1:] / pixels
    area = pixels * (sy * sx)
    weight = np.digitize(peak, AGATSTON_WEIGHT_EDGES_HU) + 1
    keep = area >= AGATSTON_MIN_AREA_MM2 - 1e-9  # tolerate rounding of an area of exactly 1 mm²
    offset = [s.start for s in box]
    lesions = [
        Lesion(
            slice=int(slices[i + 1] + offset[0]),
            row=float(rows[i] + offset[1]),
            column=float(columns[i] + offset[2]),
            area_mm2=float(area[i]),
            peak_hu=float(peak[i]),
            weight=int(weight[i]),
            score=float(area[i] * weight[i] * sz / AGATSTON_SLICE_MM),
            volume_mm3=float(area[i] * sz),
        )
        for i in np.flatnonzero(keep)
    ]
    ordered = tuple(sorted(lesions, key=lambda lesion: (lesion.slice, lesion.row, lesion.column)))
    return _Components(box, labels, weight, keep, ordered)


def agatston_score(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> float:
    """The Agatston score of `calcium_score` (kept as the metric table's entry point)."""
    return calcium_score(image_hu, mask, spacing).agatston
