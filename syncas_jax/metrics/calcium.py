"""Coronary calcium of a CT scan found through a coronary mask: lesions, Agatston, volume, per artery, CAC-DRS.

The one computation behind `python -m syncas_jax.calcium`, `infer --report` and evaluate's Agatston
columns (design §13). Arrays are (Z, Y, X) with Z the axial slice axis (callers reorient files
first: `syncas_jax.data.orientation`); spacing is (z, y, x) mm from the file; images in HU.

**A lesion** (the clinical definition). Coronary calcium sits in the vessel wall, partly outside
the lumen that a coronary mask marks, so a lesion is *found* through the mask and *scored whole*:

* on each axial slice, an 8-connected component of HU ≥ 130 inside the search region — the mask
  dilated in-plane by `LESION_MARGIN_MM` (3 mm, a distance in millimetres, so anisotropic pixels
  dilate alike) — that overlaps the mask itself by at least `MIN_MASK_OVERLAP_PIXELS`;
* area = its pixels × Δy·Δx, counted when ≥ 1 mm²; weight 1/2/3/4 for a peak HU in
  [130, 200) / [200, 300) / [300, 400) / ≥ 400; score = area × weight × Δz / 3 mm (the classic 3 mm
  definition, scaled by the slice increment so thin or overlapping reconstructions score alike);
  volume = its voxels × Δz·Δy·Δx.

**Not coronary calcium** (how bone and the aorta stay out when a mask strays onto them): a
component is a piece of a *larger bright structure* when that structure — its 8-connected component
of HU ≥ 130 in the whole slice — lies more than `MAX_OUTSIDE_FRACTION` outside the search region. A
coronary lesion is an island of calcium in the wall, inside the 3 mm margin; a rib, the sternum, a
vertebra or a calcified aortic wall continues far beyond it. Such components are not scored; the
result lists them as `excluded` so a reader can check them.

**Totals.** Agatston score: the sum of lesion scores; volume score: their mm³; lesion count: 3-D
lesions (scored voxels connected across slices, 26-connected; the table has one row per lesion and
slice); risk category "0", "1-99", "100-399", ">=400"; CAC-DRS "A0", "A1" (1–99), "A2" (100–299),
"A3" (≥ 300), followed by "/N<k>", k = how many of LM, LAD, LCX, RCA hold calcium, when the
arteries are known. Per artery (LM, LAD, LCX, RCA, other): the same three numbers; a lesion
belongs to the artery most of its mask-overlap voxels carry in `arteries`, "other" when none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import edt
import numpy as np
from scipy import ndimage

from syncas_jax.common.arteries import ARTERIES, OTHER, REPORT_GROUPS
from syncas_jax.metrics.masks import as_mask

AGATSTON_THRESHOLD_HU = 130.0
AGATSTON_MIN_AREA_MM2 = 1.0
AGATSTON_WEIGHT_EDGES_HU = (200.0, 300.0, 400.0)  # weight 1 below 200, 2, 3, 4 from 400 HU
AGATSTON_SLICE_MM = 3.0
LESION_MARGIN_MM = 3.0  # in-plane search margin around the coronary mask
MIN_MASK_OVERLAP_PIXELS = 1  # a lesion touches the mask itself
MAX_OUTSIDE_FRACTION = 0.25  # more of its bright structure outside the margin: bone or aortic wall, not coronary
RISK_EDGES = (100.0, 400.0)
RISK_CATEGORIES = ("0", "1-99", "100-399", ">=400")
CAC_DRS_EDGES = (100.0, 300.0)  # A1 below 100, A2 below 300, A3 from 300
LESION_FIELDS = ("slice", "row", "column", "area_mm2", "peak_hu", "weight", "score", "volume_mm3", "artery", "lesion")
EXCLUDED_FIELDS = ("slice", "row", "column", "area_mm2", "peak_hu", "outside_fraction")
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = True  # 8-connected within a slice, never across slices


@dataclass(frozen=True)
class Lesion:
    """One lesion on one axial slice: slice index (z), centroid row (y) and column (x) in voxels, area mm²,
    peak HU, weight 1-4, Agatston score (scaled to 3 mm), volume mm³, artery name and its 3-D lesion number."""

    slice: int
    row: float
    column: float
    area_mm2: float
    peak_hu: float
    weight: int
    score: float
    volume_mm3: float
    artery: str
    lesion: int


@dataclass(frozen=True)
class Excluded:
    """A bright component the mask touches that is part of a larger structure (not scored): where, how large,
    its peak HU and the share of its structure's area outside the search margin."""

    slice: int
    row: float
    column: float
    area_mm2: float
    peak_hu: float
    outside_fraction: float


@dataclass(frozen=True)
class ArteryScore:
    """agatston, volume_mm3 and lesion_count (3-D lesions) of one artery."""

    agatston: float
    volume_mm3: float
    lesion_count: int


@dataclass(frozen=True)
class CalciumScore:
    """Totals, risk category, CAC-DRS, per-artery scores (keys REPORT_GROUPS), the lesion table (by slice,
    then row) and the excluded components."""

    agatston: float
    volume_mm3: float
    lesion_count: int
    risk_category: str
    cac_drs: str
    arteries: dict[str, ArteryScore]
    lesions: tuple[Lesion, ...]
    excluded: tuple[Excluded, ...]

    def to_dict(self) -> dict:
        """JSON-able: the fields above, dataclasses as dicts."""
        out = asdict(self)
        out["lesions"] = [asdict(lesion) for lesion in self.lesions]
        out["excluded"] = [asdict(item) for item in self.excluded]
        return out


def agatston_weight(peak_hu: np.ndarray | float) -> np.ndarray:
    """Agatston weight 1/2/3/4 of a lesion's peak HU: [130, 200) / [200, 300) / [300, 400) / ≥ 400."""
    return np.digitize(peak_hu, AGATSTON_WEIGHT_EDGES_HU) + 1


def risk_category(agatston: float) -> str:
    """"0" for no calcium, "1-99" below 100 (scores under 1 included), "100-399" below 400, else ">=400"."""
    if agatston <= 0:
        return RISK_CATEGORIES[0]
    return RISK_CATEGORIES[1 + int(np.searchsorted(RISK_EDGES, agatston, side="right"))]


def cac_drs(agatston: float, arteries_with_calcium: int | None) -> str:
    """SCCT CAC-DRS: "A0", or "A1"/"A2"/"A3" by Agatston (1-99, 100-299, ≥ 300) then "/N<k>" when k is known."""
    if agatston <= 0:
        return "A0"
    grade = f"A{1 + int(np.searchsorted(CAC_DRS_EDGES, agatston, side='right'))}"
    return grade if arteries_with_calcium is None else f"{grade}/N{arteries_with_calcium}"


def calcium_score(
    image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float], arteries: np.ndarray | None = None
) -> CalciumScore:
    """The coronary calcium of the (Z, Y, X) CT `image_hu` (HU) found through `mask` (value > 0), spacing mm.

    arteries: optional (Z, Y, X) ids of `syncas_jax.common.arteries` on the mask's voxels (0 none); without
    it every lesion is "other" and CAC-DRS has no /N. See the module docstring for the definitions.
    """
    found = _find_lesions(image_hu, mask, spacing, arteries)
    lesions = found.lesions if found else ()
    groups = {}
    for group in REPORT_GROUPS:
        mine = [lesion for lesion in lesions if lesion.artery == group]
        owned = found.lesion_artery if found else {}
        groups[group] = ArteryScore(
            float(sum(lesion.score for lesion in mine)),
            float(sum(lesion.volume_mm3 for lesion in mine)),
            sum(1 for artery in owned.values() if artery == group),
        )
    agatston = float(sum(lesion.score for lesion in lesions))
    with_calcium = None if arteries is None else sum(1 for name in ARTERIES if groups[name].agatston > 0)
    return CalciumScore(
        agatston=agatston,
        volume_mm3=float(sum(lesion.volume_mm3 for lesion in lesions)),
        lesion_count=len(found.lesion_artery) if found else 0,
        risk_category=risk_category(agatston),
        cac_drs=cac_drs(agatston, with_calcium),
        arteries=groups,
        lesions=lesions,
        excluded=found.excluded if found else (),
    )


def lesion_weight_map(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """uint8 (Z, Y, X): the Agatston weight (1-4) of every voxel of a scored lesion, 0 elsewhere."""
    return lesion_maps(image_hu, mask, spacing)[0]


def lesion_maps(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(weights, excluded), both (Z, Y, X): uint8 Agatston weight of every scored lesion voxel, and bool voxels of
    the components excluded as parts of larger structures (bone, aortic wall)."""
    weights = np.zeros(np.shape(image_hu), np.uint8)
    excluded = np.zeros(np.shape(image_hu), bool)
    found = _find_lesions(image_hu, mask, spacing, None)
    if found is not None:
        z0 = found.z0
        weights[z0 : z0 + found.labels.shape[0]] = found.weight_of[found.labels]
        excluded[z0 : z0 + found.labels.shape[0]] = found.excluded_of[found.labels]
    return weights, excluded


def agatston_score(image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> float:
    """The Agatston score of `calcium_score` (the metric table's entry point)."""
    return calcium_score(image_hu, mask, spacing).agatston


def search_region(mask: np.ndarray, spacing: Sequence[float], margin_mm: float = LESION_MARGIN_MM) -> np.ndarray:
    """bool (Z, Y, X): pixels within `margin_mm` in-plane (Euclidean, in mm) of a mask pixel of the same slice."""
    mask = as_mask(mask)
    out = np.zeros(mask.shape, bool)
    sy, sx = float(spacing[1]), float(spacing[2])
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        distance = edt.edt(np.ascontiguousarray(~mask[z]), anisotropy=(sy, sx), black_border=False)
        out[z] = distance <= margin_mm + 1e-6  # a pixel exactly 3 mm away is inside
    return out


@dataclass(frozen=True)
class _Found:
    z0: int  # first slice of the slab the labels cover
    labels: np.ndarray  # int (slab): candidate component id per voxel, 0 elsewhere
    weight_of: np.ndarray  # (count + 1,) uint8 weight per scored component id, 0 otherwise
    excluded_of: np.ndarray  # (count + 1,) bool per excluded component id
    lesions: tuple[Lesion, ...]
    lesion_artery: dict[int, str]  # 3-D lesion number → its artery
    excluded: tuple[Excluded, ...]


def _per_component(ids: np.ndarray, values: np.ndarray, count: int, how: str) -> np.ndarray:
    """Sum or max of `values` per component id 1…count (index 0 of the result is component 1)."""
    if how == "sum":
        return np.bincount(ids, weights=values, minlength=count + 1)[1:]
    out = np.full(count + 1, -np.inf)
    np.maximum.at(out, ids, values)
    return out[1:]


def _majority_artery(ids: np.ndarray, artery_ids: np.ndarray, count: int) -> np.ndarray:
    """(count,) artery id (1–4) most frequent among each component's voxels, 0 where it has none."""
    known = (artery_ids >= 1) & (artery_ids <= len(ARTERIES))
    votes = np.zeros((count + 1, len(ARTERIES) + 1), np.int64)
    np.add.at(votes, (ids[known], artery_ids[known]), 1)
    best = np.argmax(votes[1:, 1:], axis=1) + 1
    return np.where(votes[1:, 1:].max(axis=1) > 0, best, 0)


def _find_lesions(
    image_hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float], arteries: np.ndarray | None
) -> _Found | None:
    """Candidate components on the mask's slices, which of them are lesions or excluded, and the lesion table."""
    image_hu = np.asarray(image_hu)
    mask = as_mask(mask)
    if image_hu.shape != mask.shape:
        raise ValueError(f"image shape {image_hu.shape} differs from mask shape {mask.shape}")
    if arteries is not None and np.shape(arteries) != mask.shape:
        raise ValueError(f"artery map shape {np.shape(arteries)} differs from mask shape {mask.shape}")
    sz, sy, sx = (float(s) for s in spacing)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    hu, inside = image_hu[z0:z1], mask[z0:z1]
    bright = hu >= AGATSTON_THRESHOLD_HU
    region = search_region(inside, spacing)
    labels, count = ndimage.label(bright & region, structure=IN_PLANE)
    if count == 0:
        return None
    structures, _ = ndimage.label(bright, structure=IN_PLANE)
    z, y, x = np.nonzero(labels)
    ids = labels[z, y, x]
    pixels = np.bincount(ids, minlength=count + 1)[1:]
    peak = _per_component(ids, hu[z, y, x].astype(np.float64), count, "max")
    overlap = _per_component(ids, inside[z, y, x].astype(np.float64), count, "sum")
    structure_of = np.zeros(count + 1, np.int64)
    structure_of[ids] = structures[z, y, x]  # a component lies inside one bright structure
    structure_pixels = np.bincount(structures.ravel())
    structure_inside = np.bincount(structure_of[1:], weights=pixels, minlength=len(structure_pixels))
    outside = 1.0 - structure_inside[structure_of[1:]] / structure_pixels[structure_of[1:]]
    area = pixels * (sy * sx)
    big_enough = area >= AGATSTON_MIN_AREA_MM2 - 1e-9  # tolerate rounding of an area of exactly 1 mm²
    touches = overlap >= MIN_MASK_OVERLAP_PIXELS
    is_excluded = touches & (outside > MAX_OUTSIDE_FRACTION)
    scored = touches & ~is_excluded & big_enough
    weight = agatston_weight(peak)
    rows = _per_component(ids, y.astype(np.float64), count, "sum") / pixels
    columns = _per_component(ids, x.astype(np.float64), count, "sum") / pixels
    slices = np.zeros(count + 1, np.int64)
    slices[ids] = z + z0

    if arteries is None:
        artery_of = np.zeros(count, np.int64)
    else:
        in_mask = inside[z, y, x]
        artery_of = _majority_artery(ids[in_mask], np.asarray(arteries)[z0:z1][z, y, x][in_mask], count)
    names = np.array([OTHER, *ARTERIES])  # artery id 0 → other
    weight_of = np.zeros(count + 1, np.uint8)
    weight_of[1:] = np.where(scored, weight, 0)
    excluded_of = np.zeros(count + 1, bool)
    excluded_of[1:] = is_excluded & big_enough
    lesion_3d, _ = ndimage.label(weight_of[labels] > 0, structure=np.ones((3, 3, 3), bool))
    number = np.zeros(count + 1, np.int64)
    number[ids] = lesion_3d[z, y, x]

    lesions = [
        Lesion(
            slice=int(slices[i + 1]),
            row=float(rows[i]),
            column=float(columns[i]),
            area_mm2=float(area[i]),
            peak_hu=float(peak[i]),
            weight=int(weight[i]),
            score=float(area[i] * weight[i] * sz / AGATSTON_SLICE_MM),
            volume_mm3=float(area[i] * sz),
            artery=str(names[artery_of[i]]),
            lesion=int(number[i + 1]),
        )
        for i in np.flatnonzero(scored)
    ]
    excluded = [
        Excluded(int(slices[i + 1]), float(rows[i]), float(columns[i]), float(area[i]), float(peak[i]),
                 float(outside[i]))
        for i in np.flatnonzero(is_excluded & big_enough)
    ]  # fmt: skip
    lesions = _numbered_in_table_order(sorted(lesions, key=lambda les: (les.slice, les.row, les.column)))
    return _Found(
        z0=z0,
        labels=labels,
        weight_of=weight_of,
        excluded_of=excluded_of,
        lesions=tuple(lesions),
        lesion_artery=_lesion_arteries(lesions),
        excluded=tuple(sorted(excluded, key=lambda e: (e.slice, e.row, e.column))),
    )


def _numbered_in_table_order(lesions: Sequence[Lesion]) -> list[Lesion]:
    """The lesions with their 3-D lesion numbers renumbered 1, 2, … in order of first appearance."""
    first: dict[int, int] = {}
    for lesion in lesions:
        first.setdefault(lesion.lesion, len(first) + 1)
    return [replace(lesion, lesion=first[lesion.lesion]) for lesion in lesions]


def _lesion_arteries(lesions: Sequence[Lesion]) -> dict[int, str]:
    """3-D lesion number → the artery holding most of its area (over its slices)."""
    area: dict[int, dict[str, float]] = {}
    for lesion in lesions:
        per = area.setdefault(lesion.lesion, {})
        per[lesion.artery] = per.get(lesion.artery, 0.0) + lesion.area_mm2
    order = {name: i for i, name in enumerate(REPORT_GROUPS)}  # ties go to the first artery of the report
    return {n: min(per, key=lambda name: (-per[name], order[name])) for n, per in sorted(area.items())}

