"""Procedural labelled chest phantom: a CTA-like volume with TotalSegmentator-style labels.

`make_phantom` draws a cardiac-FOV chest (body, fat, muscle, ribs, sternum, spine, lungs,
liver, stomach, oesophagus, great vessels, heart chambers, myocardium) and a coronary
tree rising from the aortic root (left main → LAD with diagonals, LCx with an obtuse
marginal; RCA → acute marginal, PDA) lying in the epicardial fat (a fat sleeve follows each
vessel where its course leaves the fat envelope). Two side branches are
interrupted, so the coronary label has several disconnected segments besides the
separate left and right trees. Intensities are contrast-phase (lumen ≈ 330–430 HU,
myocardium ≈ 110, fat −100, lung −850, bone 220/800) with partial-volume blur and noise.

Geometry is set in units of L = half the in-plane field of view (physical proportions
kept along z unless the z field of view is under ±0.6 L, then it is squeezed to fit), so
any (Z, Y, X) and spacing gives the same anatomy; vessel radii
are floored at 0.7 in-plane voxels so tiny test volumes keep a visible tree. Arrays are
(z, y, x): z inferior → superior, y anterior → posterior, x patient right → left
(affine diag(−sx, −sy, sz), radiological display). Deterministic per seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from syncas_jax.common.arteries import ARTERIES_SUFFIX, ARTERY_IDS, BRANCH_ARTERY
from syncas_jax.common.nifti import volume_from_array, write_volume
from syncas_jax.synth.hu_table import CORONARY_ID

# Label ids (TotalSegmentator `total` as is, `heartchambers_highres` + 117, coronary 128).
LIVER, STOMACH, ESOPHAGUS = 5, 6, 15
LUNG_LEFT, LUNG_RIGHT = 11, 13  # lower left lobe, middle right lobe stand for the lungs
VERTEBRA, SPINAL_CORD = 36, 79  # vertebrae_T8
AORTA_TOTAL, PULMONARY_VEIN, LAA, SVC, IVC, PORTAL_VEIN = 52, 53, 61, 62, 63, 64
RIB_LEFT, RIB_RIGHT, STERNUM = 96, 108, 116
MYOCARDIUM, LEFT_ATRIUM, LEFT_VENTRICLE, RIGHT_ATRIUM, RIGHT_VENTRICLE, AORTA, PULMONARY_ARTERY = range(118, 125)
CORONARY = CORONARY_ID
EPICARDIAL_FAT, FAT_HU = 0, -100.0  # unlabelled: the synthesis keeps its CTA value
HEART_WALLS = (MYOCARDIUM, LEFT_ATRIUM, LEFT_VENTRICLE, RIGHT_ATRIUM, RIGHT_VENTRICLE, AORTA, LAA)

Vec = tuple[float, float, float]


@dataclass(frozen=True)
class _Grid:
    """Voxel grid: shape (Z, Y, X), spacing (mm), per-axis unit lengths (mm); coordinates (w, v, u) in those units."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    scale: tuple[float, float, float]

    @property
    def voxel(self) -> np.ndarray:
        """Voxel size per axis in grid units, (3,)."""
        return np.asarray(self.spacing) / np.asarray(self.scale)

    def axes(self, box: tuple[slice, slice, slice] | None = None) -> list[np.ndarray]:
        """Broadcastable (w, v, u) coordinate arrays (L units) of the voxels in `box`."""
        box = box or tuple(slice(0, n) for n in self.shape)
        out = []
        for axis, (n, size, sl) in enumerate(zip(self.shape, self.voxel, box)):
            values = (np.arange(sl.start, sl.stop, dtype=np.float32) - (n - 1) / 2) * np.float32(size)
            out.append(values.reshape([-1 if a == axis else 1 for a in range(3)]))
        return out

    def box(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel index box covering the L-unit (w, v, u) box [low, high]; None if it misses the grid."""
        slices = []
        for n, size, lo, hi in zip(self.shape, self.voxel, low, high):
            start = max(0, int(np.floor(lo / size + (n - 1) / 2)))
            stop = min(n, int(np.ceil(hi / size + (n - 1) / 2)) + 1)
            if start >= stop:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)


class _Canvas:
    """Image (HU), label and coronary-artery volumes painted structure by structure (later paint wins)."""

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.image = np.full(grid.shape, -1000.0, np.float32)
        self.labels = np.zeros(grid.shape, np.int16)
        self.arteries = np.zeros(grid.shape, np.uint8)  # ids of syncas_jax.common.arteries on coronary voxels

    def paint(
        self, mask: np.ndarray, label: int | None, hu: float, box: tuple[slice, ...] | None = None,
        spare: tuple[int, ...] = (), artery: int = 0,
    ) -> None:
        """Paint `hu` (and `label`; None keeps the old one) where `mask`, except on voxels labelled one of `spare`.

        The artery map is set to `artery` where painted (0 wherever anything but a coronary is painted)."""
        box = box or (slice(None),) * 3
        mask = np.broadcast_to(mask, self.image[box].shape)
        if spare:
            mask = mask & ~np.isin(self.labels[box], spare)
        self.image[box][mask] = hu
        if label is not None:
            self.labels[box][mask] = label
            self.arteries[box][mask] = artery

    def tube(
        self, points: np.ndarray, radii: np.ndarray, label: int | None, hu: float, spare: tuple[int, ...] = (),
        artery: int = 0,
    ) -> None:
        """Paint the union of balls of `radii` (L units) at `points` (P, 3) (w, v, u), sampled densely."""
        grid = self.grid
        reach = float(radii.max()) + float(grid.voxel.max())
        box = grid.box(points.min(0) - reach, points.max(0) + reach)
        if box is None:
            return
        w, v, u = grid.axes(box)
        coords = np.stack(np.broadcast_arrays(w, v, u), axis=-1).reshape(-1, 3)
        distance, index = cKDTree(points).query(coords, distance_upper_bound=float(radii.max()))
        hit = np.isfinite(distance)
        inside = np.zeros(len(coords), bool)
        inside[hit] = distance[hit] <= radii[index[hit]]
        self.paint(inside.reshape(self.image[box].shape), label, hu, box, spare, artery)

    def line(self, points: np.ndarray, label: int, hu: float, artery: int = 0) -> None:
        """Paint a 6-connected voxel line through densely sampled `points` (P, 3) (w, v, u) L units."""
        grid = self.grid
        centre = (np.asarray(grid.shape) - 1) / 2
        index = np.rint(points / grid.voxel + centre).astype(np.int64)
        step = np.diff(index, axis=0)
        near = np.abs(step).max(axis=1) <= 1  # not across a gap
        corner_z = (index[:-1] + step * np.array([1, 0, 0]))[near]
        corner_zy = (index[:-1] + step * np.array([1, 1, 0]))[near]
        voxels = np.concatenate([index, corner_z, corner_zy])
        voxels = voxels[np.all((voxels >= 0) & (voxels < np.asarray(grid.shape)), axis=1)]
        self.image[tuple(voxels.T)] = hu
        self.labels[tuple(voxels.T)] = label
        self.arteries[tuple(voxels.T)] = artery


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _polyline(control: np.ndarray, step: float) -> np.ndarray:
    """Points every `step` along the polyline through `control` (K, 3)."""
    segments = np.linalg.norm(np.diff(control, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(segments)])
    s = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / step)) + 1))
    return np.stack([np.interp(s, arc, control[:, k]) for k in range(3)], axis=1)


def _ellipsoid(local: np.ndarray, centre: Vec, semi: Vec) -> np.ndarray:
    """Boolean: points local (..., 3) inside the axis-aligned ellipsoid."""
    q = ((local - np.asarray(centre, np.float32)) / np.asarray(semi, np.float32)) ** 2
    return q.sum(-1) <= 1.0


@dataclass(frozen=True)
class Anatomy:
    """Everything that makes one phantom differ from another (drawn per seed by `draw_anatomy`).

    Lengths are in L units (half the in-plane field of view) unless they say mm; "nominal mm"
    are millimetres at L = 100 mm (a 200 mm cardiac field of view) and scale with L, so that any
    grid shows the same anatomy.
    """

    heart_offset: tuple[float, float, float]  # heart centre shift (w, v, u)
    heart_axis_jitter: tuple[float, float, float]  # added to the base → apex direction before normalising
    heart_roll_deg: float  # rotation of the heart about its long axis
    heart_size: float  # scale of every chamber
    fat_scale: float  # epicardial fat envelope / nominal
    fat_gap_mm: float  # fat between a coronary's wall and the myocardium (nominal mm)
    calibre_scale: float  # coronary radii / nominal
    branches: tuple[str, ...]  # the side branches present (main vessels always are)
    length_fraction: tuple[tuple[str, float], ...]  # fraction of each branch's course that is drawn
    interrupted: tuple[str, ...]  # side branches with a gap (disconnected segments)
    course_seed: int  # per-control-point jitter of the coronary course
    contrast_hu: float  # left-heart blood pool
    right_heart_ratio: float  # right-heart blood / left-heart blood
    myocardium_hu: float
    liver_hu: float
    liver_offset: tuple[float, float, float]


MAIN_BRANCHES = ("lm", "lad", "lcx", "rca")
SIDE_BRANCHES = ("d1", "d2", "om", "am", "pda")
OPTIONAL_BRANCHES = ("d2", "om", "am")  # each present with probability P_BRANCH
P_BRANCH = 0.75


def draw_anatomy(seed: int) -> Anatomy:
    """The random anatomy of phantom `seed`: heart pose and size, fat, coronary calibre, course and branching."""
    rng = np.random.default_rng(seed)
    present = tuple(b for b in SIDE_BRANCHES if b not in OPTIONAL_BRANCHES or rng.random() < P_BRANCH)
    side = [b for b in present if b in ("d1", "d2", "om", "am", "pda")]
    interrupted = tuple(rng.choice(side, size=min(2, len(side)), replace=False).tolist())
    lengths = tuple(
        (b, float(rng.uniform(0.8, 1.0) if b in MAIN_BRANCHES else rng.uniform(0.6, 1.0)))
        for b in (*MAIN_BRANCHES, *present)
    )
    contrast = float(rng.uniform(330, 430))
    return Anatomy(
        heart_offset=tuple(rng.uniform(-0.06, 0.06, 3).tolist()),
        heart_axis_jitter=tuple(rng.uniform(-0.18, 0.18, 3).tolist()),
        heart_roll_deg=float(rng.uniform(-20, 20)),
        heart_size=float(rng.uniform(0.85, 1.15)),
        fat_scale=float(rng.uniform(0.92, 1.15)),
        fat_gap_mm=float(rng.uniform(2.5, 5.0)),
        calibre_scale=float(rng.uniform(0.8, 1.2)),
        branches=present,
        length_fraction=lengths,
        interrupted=interrupted,
        course_seed=int(rng.integers(2**31)),
        contrast_hu=contrast,
        right_heart_ratio=float(rng.uniform(0.7, 0.9)),
        myocardium_hu=float(rng.uniform(100, 130)),
        liver_hu=float(rng.uniform(90, 115)),
        liver_offset=tuple(rng.uniform(-0.04, 0.04, 3).tolist()),
    )


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """(3, 3) rotation by `degrees` about the unit vector `axis` (Rodrigues)."""
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


class _Heart:
    """Chambers as ellipsoids in a heart frame (e1 base → apex, e2 towards the LV, e3 anterior)."""

    def __init__(self, anatomy: Anatomy):
        self.centre = np.array([-0.05, -0.12, 0.12]) + np.asarray(anatomy.heart_offset)
        e1 = _unit(np.array([-0.45, -0.5, 0.75]) + np.asarray(anatomy.heart_axis_jitter))
        anterior = np.array([0.0, -1.0, 0.0])
        e3 = _unit(anterior - anterior.dot(e1) * e1)
        e2 = np.cross(e3, e1)
        e2 = e2 if e2[2] > 0 else -e2
        roll = _rotation(e1, anatomy.heart_roll_deg)
        self.frame = np.stack([e1, roll @ e2, roll @ e3], axis=1)  # columns: heart axes in (w, v, u)
        k = anatomy.heart_size
        self.size = k
        # (centre, semi-axes) in the heart frame, L units.
        self.lv_outer = ((0.08 * k, 0.07 * k, 0.0), (0.36 * k, 0.25 * k, 0.25 * k))
        self.lv = ((0.1 * k, 0.08 * k, 0.0), (0.27 * k, 0.15 * k, 0.15 * k))
        self.rv = ((0.05 * k, -0.2 * k, 0.05 * k), (0.3 * k, 0.14 * k, 0.24 * k))
        self.rv_outer = (self.rv[0], tuple(a + 0.035 * k for a in self.rv[1]))
        self.la = ((-0.32 * k, 0.08 * k, -0.14 * k), (0.16 * k, 0.17 * k, 0.13 * k))
        self.ra = ((-0.28 * k, -0.2 * k, -0.02 * k), (0.17 * k, 0.13 * k, 0.14 * k))
        self.laa = ((-0.22 * k, 0.22 * k, 0.09 * k), (0.09 * k, 0.05 * k, 0.05 * k))
        f = anatomy.fat_scale
        self.fat = ((0.0, -0.04 * k, 0.0), (0.5 * k * f, 0.4 * k * f, 0.36 * k * f))
        self.root = (-0.38 * k, -0.02 * k, 0.06 * k)  # aortic valve
        self.rvot = (-0.3 * k, -0.16 * k, 0.2 * k)  # pulmonary valve

    def to_world(self, local: np.ndarray) -> np.ndarray:
        return self.centre + np.asarray(local) @ self.frame.T

    def to_local(self, world: np.ndarray) -> np.ndarray:
        return (np.asarray(world) - self.centre) @ self.frame

    def inside_muscle(self, local: np.ndarray) -> np.ndarray:
        """Points inside any chamber or myocardium (the surface the coronaries lie on)."""
        parts = (self.lv_outer, self.rv_outer, self.la, self.ra, self.laa)
        return np.any([_ellipsoid(local, c, s) for c, s in parts], axis=0)

    def surface(self, ell: np.ndarray, phi_deg: np.ndarray, offset: float) -> np.ndarray:
        """World points `offset` outside the muscle along rays from the centre at (ℓ, φ) (arrays (P,))."""
        phi = np.deg2rad(phi_deg)
        direction = _unit(np.stack([ell, np.sqrt(1 - ell**2) * np.cos(phi), np.sqrt(1 - ell**2) * np.sin(phi)], 1))
        radius = np.linspace(0.0, 0.8, 321)
        samples = direction[:, None, :] * radius[None, :, None]
        inside = self.inside_muscle(samples)
        last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
        return self.to_world(direction * (radius[last] + offset)[:, None])


NOMINAL_SCALE_MM = 100.0  # "nominal mm" are mm at L = 100 mm and scale with L

# Coronary course: start ("ostium-left", "ostium-right" or (parent, fraction along it)), control
# points (ℓ, φ°) on the heart surface, proximal and distal radius (nominal mm).
_COURSE = {
    "lm": ("ostium-left", [(-0.55, 70)], 2.2, 2.0),
    "lad": (("lm", 1.0), [(-0.45, 80), (-0.3, 85), (0.2, 100), (0.7, 97), (0.95, 90)], 1.9, 0.9),
    "lcx": (("lm", 1.0), [(-0.55, 50), (-0.5, 20), (-0.48, -30), (-0.45, -85)], 1.7, 0.9),
    "d1": (("lad", 0.3), [(0.1, 75), (0.45, 35)], 1.2, 0.7),
    "d2": (("lad", 0.6), [(0.5, 80), (0.75, 45)], 1.1, 0.7),
    "om": (("lcx", 0.5), [(-0.3, -8), (0.45, -10)], 1.2, 0.7),
    "rca": ("ostium-right", [(-0.5, 150), (-0.5, 200), (-0.45, 245), (-0.4, 265)], 1.9, 1.1),
    "am": (("rca", 0.45), [(-0.3, 200), (0.3, 195)], 1.0, 0.6),
    "pda": (("rca", 1.0), [(-0.2, 263), (0.6, 262)], 1.1, 0.7),
}
COURSE_JITTER_DEG = 12.0  # per control point, around the heart's long axis
COURSE_JITTER_ELL = 0.05  # per control point, along the long axis


def _fat_gap(heart: _Heart, anatomy: Anatomy, voxel: float) -> float:
    """Fat between a coronary's wall and the muscle (L units), at least `voxel` (the largest voxel size)."""
    return max(anatomy.fat_gap_mm * heart.size / NOMINAL_SCALE_MM, voxel)


def _coronary_tree(heart: _Heart, anatomy: Anatomy, min_radius: float, voxel: float, step: float):
    """Coronary branches {name: (points (P, 3) world L units, radii (P,))}; the `interrupted` ones have a gap.

    min_radius: radius floor; voxel: the largest voxel size (both L units).
    """
    rng = np.random.default_rng(anatomy.course_seed)
    mm = heart.size / NOMINAL_SCALE_MM
    fat_gap = _fat_gap(heart, anatomy, voxel)  # coronaries run in the epicardial fat, off the muscle
    lengths = dict(anatomy.length_fraction)

    def lift(controls: list[tuple[float, float]], offset: float) -> np.ndarray:
        """Dense surface points through jittered (ℓ, φ°) control points."""
        ell = np.array([c[0] + rng.uniform(-COURSE_JITTER_ELL, COURSE_JITTER_ELL) for c in controls], float)
        phi = np.array([c[1] + rng.uniform(-COURSE_JITTER_DEG, COURSE_JITTER_DEG) for c in controls], float)
        dense = _polyline(np.stack([ell, phi / 90.0, np.zeros_like(ell)], 1), 0.01)
        return heart.surface(np.clip(dense[:, 0], -0.97, 0.97), dense[:, 1] * 90.0, offset)

    root = heart.to_world(heart.root)
    aorta_radius = 0.12 * heart.size
    branches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in (*MAIN_BRANCHES, *SIDE_BRANCHES):
        if name not in MAIN_BRANCHES and name not in anatomy.branches:
            continue
        start, controls, r0, r1 = _COURSE[name]
        r0, r1 = r0 * anatomy.calibre_scale, r1 * anatomy.calibre_scale
        surface = lift(controls, max(r0 * mm, min_radius) + fat_gap)
        if isinstance(start, str):  # from the aortic root, through the aortic wall
            origin = root + _unit(surface[0] - root) * aorta_radius * 0.9
        else:
            parent = branches[start[0]][0]
            origin = parent[int(start[1] * (len(parent) - 1))]
        points = _polyline(np.concatenate([origin[None], surface]), step)
        points = points[: max(2, int(round(lengths[name] * len(points))))]
        radii = np.maximum(np.linspace(r0, r1, len(points)) * mm, min_radius)
        branches[name] = (points, radii)
    for name in anatomy.interrupted:
        points, radii = branches[name]
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
        gap = 2 * radii.max() + 2.5 * voxel
        middle = rng.uniform(0.45, 0.75) * arc[-1]
        keep = np.abs(arc - middle) > gap / 2
        branches[name] = (points[keep], radii[keep])
    return branches


def _vertical_tube(centre_vu: tuple[float, float], step: float, z_range=(-9.0, 9.0)) -> np.ndarray:
    """Points along a straight tube through (w=0, v, u) parallel to the w (z) axis."""
    ends = [np.array([z, centre_vu[0], centre_vu[1]]) for z in z_range]
    return _polyline(np.stack(ends), step)


def _paint_chest(canvas: _Canvas, w: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Body wall, ribs, lungs, mediastinal fat, sternum, spine; returns the inside of the ribcage."""
    body = ((v - 0.05) / 0.72) ** 2 + (u / 0.96) ** 2
    canvas.paint(body <= 1, None, -100.0)
    canvas.paint(body <= 0.9**2, None, 50.0)
    angle = np.arctan2(v - 0.05, u)
    ribs = (body >= 0.8**2) & (body <= 0.84**2) & (np.cos(9 * angle + 6 * w) > 0.2)
    canvas.paint(ribs & (u >= 0), RIB_LEFT, 800.0)
    canvas.paint(ribs & (u < 0), RIB_RIGHT, 800.0)
    chest = body <= 0.8**2
    canvas.paint(chest, None, -90.0)
    for side, label in ((1, LUNG_LEFT), (-1, LUNG_RIGHT)):
        lung = ((u - side * 0.48) / 0.37) ** 2 + ((v - 0.02) / 0.53) ** 2 <= 1
        canvas.paint(lung & chest, label, -850.0)
    sternum = ((v + 0.62) / 0.035) ** 2 + (u / 0.08) ** 2
    canvas.paint(sternum <= 1, STERNUM, 800.0)
    canvas.paint(sternum <= 0.6, STERNUM, 350.0)
    vertebra = (v - 0.52) ** 2 + u**2
    canvas.paint(vertebra <= 0.11**2, VERTEBRA, 800.0)
    canvas.paint(vertebra <= 0.09**2, VERTEBRA, 220.0)
    canvas.paint((v - 0.68) ** 2 + u**2 <= 0.045**2, SPINAL_CORD, 15.0)
    for side in (1, -1):
        canvas.paint(((v - 0.72) / 0.08) ** 2 + ((u - side * 0.2) / 0.11) ** 2 <= 1, None, 50.0)
    return chest


def _paint_abdomen_and_mediastinum(canvas: _Canvas, anatomy: Anatomy, chest: np.ndarray, step: float) -> None:
    """Liver, stomach (with a gas cap), portal vein below the diaphragm; descending aorta and oesophagus."""
    w, v, u = canvas.grid.axes()
    c = np.array([-0.75, 0.05, -0.35]) + np.asarray(anatomy.liver_offset)
    liver = ((w - c[0]) / 0.5) ** 2 + ((v - c[1]) / 0.52) ** 2 + ((u - c[2]) / 0.55) ** 2
    canvas.paint((liver <= 1) & chest, LIVER, anatomy.liver_hu)
    stomach = ((w + 0.8) / 0.32) ** 2 + ((v + 0.1) / 0.25) ** 2 + ((u - 0.45) / 0.25) ** 2 <= 1
    canvas.paint(stomach & chest, STOMACH, 25.0)
    canvas.paint(stomach & chest & (w > -0.56) & (v < -0.1), STOMACH, -1000.0)  # gas cap
    portal = _polyline(np.array([[-0.95, 0.12, -0.05], [-0.82, 0.05, -0.25], [-0.78, 0.02, -0.5]]), step)
    canvas.tube(portal, np.full(len(portal), 0.035), PORTAL_VEIN, 170.0)
    for centre, radius, label, hu in (
        ((0.42, 0.15), 0.085, AORTA_TOTAL, anatomy.contrast_hu),
        ((0.31, 0.01), 0.045, ESOPHAGUS, 40.0),
        ((0.31, 0.01), 0.012, ESOPHAGUS, -1000.0),  # its air
    ):
        points = _vertical_tube(centre, step)
        canvas.tube(points, np.full(len(points), radius), label, hu)


def _paint_heart(canvas: _Canvas, heart: _Heart, anatomy: Anatomy) -> None:
    """Epicardial fat, chambers and myocardium."""
    box = canvas.grid.box(heart.centre - 0.65, heart.centre + 0.65)
    if box is None:
        return
    hw, hv, hu = canvas.grid.axes(box)
    local = heart.to_local(np.stack(np.broadcast_arrays(hw, hv, hu), axis=-1))
    right_heart = anatomy.contrast_hu * anatomy.right_heart_ratio
    parts = (
        (heart.fat, EPICARDIAL_FAT, FAT_HU, None),  # epicardial fat envelope
        (heart.rv_outer, MYOCARDIUM, anatomy.myocardium_hu, None),
        (heart.rv, RIGHT_VENTRICLE, right_heart, heart.lv_outer),
        (heart.lv_outer, MYOCARDIUM, anatomy.myocardium_hu, None),
        (heart.lv, LEFT_VENTRICLE, anatomy.contrast_hu, None),
        (heart.ra, RIGHT_ATRIUM, right_heart, None),
        (heart.la, LEFT_ATRIUM, anatomy.contrast_hu, None),
        (heart.laa, LAA, anatomy.contrast_hu, None),
    )
    for part, label, value, minus in parts:
        mask = _ellipsoid(local, *part)
        if minus is not None:
            mask &= ~_ellipsoid(local, *minus)
        canvas.paint(mask, label, value, box)


def _paint_great_vessels(canvas: _Canvas, heart: _Heart, anatomy: Anatomy, step: float) -> None:
    """Ascending aorta, pulmonary artery, venae cavae and pulmonary veins attached to the heart."""
    k, contrast = heart.size, anatomy.contrast_hu
    up = np.array([1.0, 0.0, 0.0])
    root, rvot = heart.to_world(heart.root), heart.to_world(heart.rvot)
    ra_top = heart.to_world((-0.35 * k, -0.24 * k, -0.04 * k))
    ra_bottom = heart.to_world((-0.16 * k, -0.26 * k, -0.14 * k))
    tubes = [
        ([root, root + np.array([0.5, -0.02, -0.06]), root + np.array([2.0, 0.1, -0.1])], 0.12 * k, AORTA, contrast),
        ([rvot, rvot + np.array([0.35, 0.1, 0.05]), rvot + np.array([0.6, 0.45, 0.1])], 0.1 * k, PULMONARY_ARTERY,
         contrast * anatomy.right_heart_ratio),
        ([ra_top, ra_top + 2.0 * up], 0.065, SVC, contrast * 1.3),
        ([ra_bottom, ra_bottom + np.array([-2.0, 0.3, 0.0])], 0.075, IVC, 140.0),
    ]  # fmt: skip
    la = heart.to_world(heart.la[0])
    for dw, side in ((0.1, 1), (-0.1, 1), (0.1, -1), (-0.1, -1)):
        tubes.append(([la, la + np.array([dw, 0.1, side * 0.45])], 0.035, PULMONARY_VEIN, contrast))
    for control, radius, label, hu in tubes:
        points = _polyline(np.stack(control), step)
        canvas.tube(points, np.full(len(points), radius), label, hu)


@dataclass(frozen=True)
class PhantomCase:
    """image float32 (Z, Y, X) HU, labels int16 (Z, Y, X), the 4×4 NIfTI affine, and arteries uint8 (Z, Y, X):
    the artery (`syncas_jax.common.arteries` ids: LM 1, LAD 2, LCX 3, RCA 4) of every coronary voxel, 0 elsewhere."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    arteries: np.ndarray


def make_phantom(
    shape: tuple[int, int, int] = (128, 256, 256),
    spacing: tuple[float, float, float] = (1.0, 0.8, 0.8),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A labelled CTA-like chest volume with the anatomy `draw_anatomy(seed)`.

    shape: (Z, Y, X) voxels; spacing: (z, y, x) mm. Returns image float32 (Z, Y, X) in HU,
    labels int16 (Z, Y, X) with the ids of the HU table (design §1) (and a few more: lungs, bone,
    descending aorta 52, portal vein 64), and the 4×4 NIfTI affine (for (x, y, z) indices).
    `make_phantom_case` gives the coronary artery map too.
    """
    case = make_phantom_case(shape, spacing, seed)
    return case.image, case.labels, case.affine


def make_phantom_case(
    shape: tuple[int, int, int] = (128, 256, 256),
    spacing: tuple[float, float, float] = (1.0, 0.8, 0.8),
    seed: int = 0,
) -> PhantomCase:
    """`make_phantom`'s volumes and the artery of each coronary voxel (side branches take their artery's id)."""
    anatomy = draw_anatomy(seed)
    scale = min(shape[1] * spacing[1], shape[2] * spacing[2]) / 2
    # Short z fields of view are squeezed so that w spans at least ±0.6 (liver, stomach, great vessels in view).
    scale_z = min(scale, shape[0] * spacing[0] / 2 / 0.6)
    grid = _Grid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing), (scale_z, scale, scale))
    canvas = _Canvas(grid)
    min_radius = 0.7 * float(grid.voxel[1:].min())
    step = 0.3 * min(float(grid.voxel.min()), min_radius)
    chest = _paint_chest(canvas, *grid.axes())
    _paint_abdomen_and_mediastinum(canvas, anatomy, chest, step)
    heart = _Heart(anatomy)
    _paint_heart(canvas, heart, anatomy)
    _paint_great_vessels(canvas, heart, anatomy, step)
    voxel = float(grid.voxel.max())
    branches = _coronary_tree(heart, anatomy, min_radius, voxel, step)
    tree = [(ARTERY_IDS[BRANCH_ARTERY[name]], *branch) for name, branch in branches.items() if len(branch[0])]
    sleeve = _fat_gap(heart, anatomy, voxel)  # the sleeve reaches the muscle the course was lifted off
    for _, points, radii in tree:
        # A coronary runs in epicardial fat wherever its course goes (on a non-contrast scan the fat is
        # what shows it): where the course leaves the fat envelope (liver, lung, great veins) the fat follows.
        canvas.tube(points, radii + sleeve, EPICARDIAL_FAT, FAT_HU, spare=HEART_WALLS)
    for artery, points, radii in tree:  # drawn last
        canvas.tube(points, radii, CORONARY, anatomy.contrast_hu, artery=artery)
        # keeps thin vessels 6-connected across thick slices
        canvas.line(points, CORONARY, anatomy.contrast_hu, artery=artery)
    noise = np.random.default_rng([seed, 1]).normal(0.0, 18.0, shape).astype(np.float32)
    image = gaussian_filter(canvas.image, sigma=0.5) + noise
    return PhantomCase(image.astype(np.float32), canvas.labels, phantom_affine(shape, spacing), canvas.arteries)


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """NIfTI affine for (x, y, z) indices: x → patient left, y → posterior, z → superior; centre at 0 mm."""
    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    centre = np.array([(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2])
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def write_phantom_case(
    folder: str | os.PathLike,
    case_id: str,
    shape: tuple[int, int, int] = (128, 256, 256),
    spacing: tuple[float, float, float] = (1.0, 0.8, 0.8),
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write `{case_id}.img.nii.gz` (int16 HU), `{case_id}.arteries.nii.gz` (uint8 artery of each coronary voxel)
    and `{case_id}.label.nii.gz` (uint8 label map), atomically.

    The label is written last, so its presence marks a complete case. Returns the image and label paths.
    """
    case = make_phantom_case(shape, spacing, seed)
    like = volume_from_array(case.image, spacing, case.affine)
    folder = Path(folder)
    image_path, label_path = folder / f"{case_id}.img.nii.gz", folder / f"{case_id}.label.nii.gz"
    write_volume(case.image, image_path, like, dtype=np.int16)
    write_volume(case.arteries, folder / f"{case_id}{ARTERIES_SUFFIX}", like, dtype=np.uint8)
    write_volume(case.labels, label_path, like, dtype=np.uint8)
    return image_path, label_path
