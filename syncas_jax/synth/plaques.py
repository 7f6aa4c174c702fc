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

Two halves. Per case, on the host (numpy/scipy): `coronary_centreline` → `centreline_table`,
the candidate sites (N, 7). Per view, pure JAX and jittable: `draw_plaques` draws the plaques
from a key and the table, `paint_plaques` paints them into any (Z, Y, X) block whose voxel
(0, 0, 0) sits at `origin_mm` of the table's frame (the whole volume for `synth`, one training
patch for online synthesis), each in a box of static size around its centre (`plaque_box`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import edt
import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from syncas_jax.common.arteries import OTHER_ID

MAX_PLAQUES = 15
P_CALCIFIED = 0.65
CALCIFIED_HU = (300.0, 1000.0)
NONCALCIFIED_HU = (50.0, 150.0)
WALL_HU = 40.0
RADIUS_FRACTION = (0.4, 0.8)  # plaque cross-section semi-axis / lumen radius
ELONGATION = (1.0, 2.5)  # plaque half-length / cross-section semi-axis
TABLE_COLUMNS = 7  # centreline table: z, y, x (mm), lumen radius (mm), unit tangent z, y, x


class CalciumLoad(NamedTuple):
    """How many plaques a view gets (uniform in [min_count, max_count]), the chance each is calcified, and their
    cross-section semi-axis: uniform in radius_mm (mm) when given, else RADIUS_FRACTION × the lumen radius."""

    min_count: int
    max_count: int
    p_calcified: float
    radius_mm: tuple[float, float] | None = None


# "default" is the training draw. The others are calcified plaques of clinical size (1-3 mm cross-section
# semi-axis) for held-out sets that span the risk categories (design §13); their ranges were set by reading
# phantoms 8-12 with the ideal reader: mild mostly 1-99, moderate mostly 100-399, severe >= 400.
CALCIUM_LOADS = {
    "default": CalciumLoad(0, MAX_PLAQUES, P_CALCIFIED),
    "none": CalciumLoad(0, 0, 0.0),
    "mild": CalciumLoad(1, 2, 1.0, (0.9, 1.4)),
    "moderate": CalciumLoad(3, 4, 1.0, (1.4, 1.8)),
    "severe": CalciumLoad(6, 9, 1.0, (1.8, 2.6)),
}


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


def centreline_table(centreline: Centreline, spacing: tuple[float, float, float]) -> np.ndarray:
    """float32 (N, 7) candidate plaque sites: centre (z, y, x) mm, lumen radius mm, unit tangent (z, y, x)."""
    mm = np.asarray(centreline.points, np.float64).reshape(-1, 3) * np.asarray(spacing, np.float64)
    columns = [mm, np.asarray(centreline.radius_mm, np.float64).reshape(-1, 1), centreline.tangent.reshape(-1, 3)]
    return np.concatenate(columns, axis=1).astype(np.float32)


def wall_thickness(spacing: tuple[float, float, float]) -> float:
    """The vessel wall shell painted around a plaque: max(0.5 mm, one in-plane voxel), in mm."""
    return max(0.5, float(min(spacing[1:])))


def plaque_box(
    max_lumen_mm: float, spacing: tuple[float, float, float], max_radius_mm: float | None = None
) -> tuple[int, int, int]:
    """Static (z, y, x) box size in voxels that holds any plaque (and its wall) on a lumen ≤ max_lumen_mm.

    A plaque reaches max(half-length, radius) + lumen + wall + one voxel from its axis point:
    at most 3·lumen + wall + pixel, since radius ≤ 0.8·lumen and half-length ≤ 2.5·radius; with
    plaques of up to max_radius_mm (a load's `radius_mm`), 2.5·max_radius_mm + lumen + wall + pixel.
    """
    pixel = float(min(spacing[1:]))
    lumen = max(float(max_lumen_mm), pixel)
    radius = 0.8 * lumen if max_radius_mm is None else max(float(max_radius_mm), 0.8 * lumen)
    reach = ELONGATION[1] * radius + lumen + wall_thickness(spacing) + pixel
    return tuple(2 * math.ceil(reach / s) + 1 for s in spacing)


class PlaqueDraw(NamedTuple):
    """MAX_PLAQUES slots of drawn plaques (only `valid` ones are painted); lengths in mm, in the table's frame."""

    valid: jnp.ndarray  # (P,) bool
    index: jnp.ndarray  # (P,) int32 row of the centreline table
    calcified: jnp.ndarray  # (P,) bool
    hu: jnp.ndarray  # (P,)
    lumen_mm: jnp.ndarray  # (P,) local lumen radius
    radius_mm: jnp.ndarray  # (P,) cross-section semi-axis
    half_length_mm: jnp.ndarray  # (P,)
    axis_mm: jnp.ndarray  # (P, 3) centreline point
    centre_mm: jnp.ndarray  # (P, 3) plaque centre, on the wall
    tangent: jnp.ndarray  # (P, 3) unit vessel direction


def _uniform(key: jax.Array, bounds: tuple[float, float], shape: tuple[int, ...]) -> jnp.ndarray:
    return jax.random.uniform(key, shape, minval=bounds[0], maxval=bounds[1])


def _across(tangent: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    """Random unit vectors (P, 3) perpendicular to unit `tangent` (P, 3)."""
    d = jax.random.normal(key, tangent.shape)
    d = d - jnp.sum(d * tangent, axis=-1, keepdims=True) * tangent
    norm = jnp.linalg.norm(d, axis=-1, keepdims=True)
    # A normal draw parallel to the tangent has probability 0; fall back to any perpendicular.
    fallback = jnp.cross(tangent, jnp.where(jnp.abs(tangent[:, :1]) < 0.9, jnp.eye(3)[0], jnp.eye(3)[1]))
    fallback = fallback / jnp.maximum(jnp.linalg.norm(fallback, axis=-1, keepdims=True), 1e-12)
    return jnp.where(norm > 1e-6, d / jnp.maximum(norm, 1e-12), fallback)


def draw_plaques(
    key: jax.Array,
    table: jnp.ndarray,
    count: jnp.ndarray,
    pixel_mm: float,
    load: CalciumLoad = CALCIUM_LOADS["default"],
) -> PlaqueDraw:
    """Draw one view's plaques: how many (uniform in the load's range, 0…15 by default), where (uniform over the
    first `count` rows of the (N, 7) `table`), kind, HU, size and side of the vessel. pixel_mm: the in-plane
    voxel size."""
    keys = jax.random.split(key, 8)
    n = jnp.asarray(count, jnp.int32)
    slots = jnp.arange(MAX_PLAQUES)
    number = jax.random.randint(keys[0], (), load.min_count, load.max_count + 1)
    valid = (slots < number) & (n > 0)
    index = jnp.minimum(jnp.floor(jax.random.uniform(keys[1], (MAX_PLAQUES,)) * n), n - 1)
    index = jnp.maximum(index, 0).astype(jnp.int32)
    rows = jnp.asarray(table, jnp.float32)[index]
    axis_mm, tangent = rows[:, :3], rows[:, 4:7]
    lumen = jnp.maximum(rows[:, 3], pixel_mm)
    calcified = jax.random.uniform(keys[2], (MAX_PLAQUES,)) < load.p_calcified
    hu = jnp.where(
        calcified, _uniform(keys[3], CALCIFIED_HU, (MAX_PLAQUES,)), _uniform(keys[4], NONCALCIFIED_HU, (MAX_PLAQUES,))
    )
    size = lumen * _uniform(keys[5], RADIUS_FRACTION, (MAX_PLAQUES,)) if load.radius_mm is None else (
        _uniform(keys[5], load.radius_mm, (MAX_PLAQUES,)))  # fmt: skip
    radius = jnp.maximum(size, 0.6 * pixel_mm)
    half_length = radius * _uniform(keys[6], ELONGATION, (MAX_PLAQUES,))
    centre = axis_mm + _across(tangent, keys[7]) * lumen[:, None]
    return PlaqueDraw(valid, index, calcified, hu, lumen, radius, half_length, axis_mm, centre, tangent)


def paint_plaques(
    image: jnp.ndarray,
    lumen: jnp.ndarray,
    plaques: PlaqueDraw,
    spacing: tuple[float, float, float],
    box: tuple[int, int, int],
    origin_mm: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Paint the valid plaques into a (Z, Y, X) HU block, in slot order; returns (image, voxels (P,)).

    lumen: (Z, Y, X) bool coronary lumen of the block; origin_mm: position of voxel (0, 0, 0) in the
    plaques' frame (default 0). Per plaque, inside a `box`-sized window around its centre: the
    vessel wall shell (outside the lumen, sparing earlier plaques) is set to 40 HU, then the
    anti-aliased ellipsoid is blended in. voxels: how many voxels of the block lie inside each plaque.
    """
    spacing_arr = jnp.asarray(spacing, jnp.float32)
    pixel = float(min(spacing[1:]))
    wall = wall_thickness(spacing)
    size = tuple(min(b, n) for b, n in zip(box, image.shape))
    upper = jnp.asarray([n - b for n, b in zip(image.shape, size)], jnp.int32)
    origin = jnp.zeros(3, jnp.float32) if origin_mm is None else jnp.asarray(origin_mm, jnp.float32)
    steps = [jnp.arange(b, dtype=jnp.float32) for b in size]

    def one(carry, p):
        out, occupied = carry
        valid, hu, lumen_r, radius, half_length, axis_mm, centre_mm, tangent = p
        centre_mm, axis_mm = centre_mm - origin, axis_mm - origin
        centre_vox = jnp.round(centre_mm / spacing_arr).astype(jnp.int32)
        start = jnp.clip(centre_vox - jnp.asarray([b // 2 for b in size]), 0, upper)
        coords = jnp.stack(
            jnp.meshgrid(*[(start[a] + steps[a]) * spacing_arr[a] for a in range(3)], indexing="ij"), axis=-1
        )
        block = jax.lax.dynamic_slice(out, start, size)
        taken = jax.lax.dynamic_slice(occupied, start, size)
        inside_lumen = jax.lax.dynamic_slice(lumen, start, size)

        rel_axis = coords - axis_mm
        along = rel_axis @ tangent
        off_axis = jnp.linalg.norm(rel_axis - along[..., None] * tangent, axis=-1)
        shell = (off_axis <= lumen_r + wall) & (jnp.abs(along) <= half_length + radius) & ~inside_lumen & ~taken
        block = jnp.where(shell & valid, WALL_HU, block)

        rel = coords - centre_mm
        along = rel @ tangent
        across = jnp.linalg.norm(rel - along[..., None] * tangent, axis=-1)
        q = jnp.sqrt((along / half_length) ** 2 + (across / radius) ** 2)
        weight = jnp.where(valid, jnp.clip((1.0 - q) * radius / pixel + 0.5, 0.0, 1.0), 0.0)
        block = (1.0 - weight) * block + weight * hu
        out = jax.lax.dynamic_update_slice(out, block.astype(out.dtype), start)
        occupied = jax.lax.dynamic_update_slice(occupied, taken | (weight > 0), start)
        return (out, occupied), jnp.where(valid, jnp.sum(q <= 1.0), 0)

    fields = (plaques.valid, plaques.hu, plaques.lumen_mm, plaques.radius_mm, plaques.half_length_mm,
              plaques.axis_mm, plaques.centre_mm, plaques.tangent)  # fmt: skip
    (out, _), voxels = jax.lax.scan(one, (image, jnp.zeros(image.shape, bool)), fields)
    return out, voxels


@partial(jax.jit, static_argnames=("spacing", "box", "load"))
def _insert(image, lumen, table, count, key, spacing, box, load):
    plaques = draw_plaques(key, table, count, float(min(spacing[1:])), load)
    out, voxels = paint_plaques(image, lumen, plaques, spacing, box)
    return out, voxels, plaques


def insert_plaques(
    image: np.ndarray,
    mask: np.ndarray,
    centreline: Centreline,
    spacing: tuple[float, float, float],
    key: jax.Array,
    load: CalciumLoad = CALCIUM_LOADS["default"],
) -> tuple[np.ndarray, list[dict]]:
    """Insert 0–15 plaques (`load`) into a (Z, Y, X) HU image; return (new float32 image, sidecar records).

    mask: the (Z, Y, X) coronary lumen; key: the view's plaque key. Records give each plaque's
    centre voxel (z, y, x) and mm, its centreline voxel, radius (in-plane voxels and mm), half-length (mm),
    the vessel's unit direction (z, y, x, in mm space), kind, HU and voxel count.
    """
    image = np.asarray(image, np.float32)
    if len(centreline.points) == 0:
        return image.copy(), []
    spacing = tuple(float(s) for s in spacing)
    # Quarter-millimetre steps of the box bound: few distinct compiled shapes over a data set.
    max_radius = None if load.radius_mm is None else load.radius_mm[1]
    box = plaque_box(math.ceil(4.0 * float(np.max(centreline.radius_mm))) / 4.0, spacing, max_radius)
    table = centreline_table(centreline, spacing)
    out, voxels, plaques = jax.device_get(
        _insert(image, np.asarray(mask, bool), table, len(table), key, spacing, box, load)
    )
    pixel = float(min(spacing[1:]))
    records = []
    for i in np.flatnonzero(plaques.valid):
        records.append(
            {
                "center_zyx": [int(c) for c in np.rint(plaques.centre_mm[i] / np.asarray(spacing))],
                "center_mm": [float(c) for c in plaques.centre_mm[i]],
                "tangent": [float(c) for c in plaques.tangent[i]],
                "centreline_zyx": [int(c) for c in centreline.points[plaques.index[i]]],
                "radius_voxels": float(plaques.radius_mm[i]) / pixel,
                "radius_mm": float(plaques.radius_mm[i]),
                "half_length_mm": float(plaques.half_length_mm[i]),
                "kind": "calcified" if plaques.calcified[i] else "non-calcified",
                "hu": float(plaques.hu[i]),
                "voxels": int(voxels[i]),
            }
        )
    return np.asarray(out, np.float32), records


def calcium_lesion_map(
    records: list[dict], shape: tuple[int, int, int], spacing: tuple[float, float, float], arteries: np.ndarray | None
) -> np.ndarray:
    """uint8 (Z, Y, X): the voxels inside each calcified plaque's ellipsoid (of `insert_plaques`' records), valued
    with the artery (`syncas_jax.common.arteries` ids) at its centreline voxel in `arteries`, or 5 ("other":
    coronary, artery unknown) without a map. Later plaques overwrite earlier ones, as painting does."""
    out = np.zeros(shape, np.uint8)
    scale = np.asarray(spacing, np.float64)
    for record in records:
        if record["kind"] != "calcified":
            continue
        centre, tangent = np.asarray(record["center_mm"]), np.asarray(record["tangent"])
        radius, half_length = record["radius_mm"], record["half_length_mm"]
        reach = max(radius, half_length)
        low = np.maximum(np.floor((centre - reach) / scale).astype(int), 0)
        high = np.minimum(np.ceil((centre + reach) / scale).astype(int) + 1, shape)
        if np.any(high <= low):
            continue
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij"), -1) * scale
        rel = grid - centre
        along = rel @ tangent
        across = np.linalg.norm(rel - along[..., None] * tangent, axis=-1)
        inside = (along / half_length) ** 2 + (across / radius) ** 2 <= 1.0
        artery = OTHER_ID if arteries is None else int(arteries[tuple(record["centreline_zyx"])]) or OTHER_ID
        out[tuple(slice(a, b) for a, b in zip(low, high))][inside] = artery
    return out
