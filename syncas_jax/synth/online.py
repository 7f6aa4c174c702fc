"""The data engine on one training patch, inside the jitted train step (online synthesis, SPEC §10).

Same steps and code as `engine.render_view`, on a crop of the CTA cache (training grid):
HU reassignment (`hu.reassign_hu`) → acquisition of every axial slice of the crop
(`ct.project` → `ct.noisy_sinograms` → `ct.reconstruct`) → plaques (`plaques.draw_plaques`,
`plaques.paint_plaques`) → rounding to whole HU, as `synth` writes int16.

Why a crop needs help. The acquisition runs on an in-plane crop: the patch plus `CROP_MARGIN`
pixels a side (the blurs, the disk dilation and the reconstruction's edge ringing stay in the
margin). Its signal is exact: the Radon transform of the crop is a complete sinogram of the
crop, so FBP reconstructs it without truncation. Its *noise* is not: a ray's Poisson variance is
(p − low)·(high − low)/photons, where p is the line integral through the whole slice and low/high
are the whole slice's sinogram min and max; through a crop p misses everything outside it
(typically hundreds of pixels of lung and air at −850…−1000 HU), and the crop's own min/max are
not the slice's. Noise drawn naively on a crop is 0.37× the offline level on the phantom, and
0.37→1.31× with only the slice's min/max (docs/online_synthesis.md).

So the CTA cache stores, per slice, the full-slice sinogram of the realistic render (table HU,
no offsets) after the σ 0.5 blur. On a crop, the rays' missing part is
``outside = band(full) − R(ref crop)``, where band() reads the full sinogram along the crop's
rays (`ct.crop_band`); noise is drawn on ``p_eff = R(view crop) + outside`` (the whole ray,
including this view's HU offsets inside the crop), in the window low/high = min/max over the
crop's rays of p_eff and over the other rays of the stored full sinogram, and ``outside`` is
subtracted again before reconstruction. Exact when every HU offset falls inside the crop;
structures reaching beyond it keep their realistic HU in `outside`.

Per item this costs three projections (realistic crop + two views) and two reconstructions of
(Z, Yp + 2·margin, Xp + 2·margin) slices; a realistic render (validation) needs one projection.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from syncas_jax.synth.ct import (
    crop_band,
    crop_band_mask,
    detector_size,
    noisy_sinograms,
    project,
    reconstruct,
    slice_keys,
)
from syncas_jax.synth.engine import split_view_key
from syncas_jax.synth.hu import reassign_hu
from syncas_jax.synth.plaques import draw_plaques, paint_plaques

CROP_MARGIN = 16  # px each side of the patch in-plane
INT16_RANGE = (-32768.0, 32767.0)  # the engine's output type (`write_volume` rounds and clips)

HuTable = tuple[tuple[int, str, float], ...]


class CtaCrop(NamedTuple):
    """One training item of the CTA cache, on the training grid; Z = patch depth, (Yc, Xc) = patch + 2·margin.

    hu: (Z, Yc, Xc) CTA HU (0 outside the volume); organs: (Z, Yc, Xc) integer label map;
    lumen: (Z, Yp, Xp) bool coronary lumen of the patch; sinogram: (Z, A, S) float32 line
    integrals of each whole slice's realistic render (blurred σ 0.5), ray t at bin t + S//2 (zero
    for slices outside the volume); photon_scale: (Z,) photon-count factor per slice (see
    `syncas_jax.data.cta_cache`); centre_offset: (2,) crop centre pixel (Yc//2, Xc//2) minus the
    slice's centre pixel (H//2, W//2), in pixels; origin_mm: (3,) position of the patch's voxel
    (0, 0, 0) in the centreline frame (mm); centreline: (N, 7) plaque sites (`plaques.centreline_table`)
    of which the first centreline_count () are valid.
    """

    hu: jnp.ndarray
    organs: jnp.ndarray
    lumen: jnp.ndarray
    sinogram: jnp.ndarray
    photon_scale: jnp.ndarray
    centre_offset: jnp.ndarray
    origin_mm: jnp.ndarray
    centreline: jnp.ndarray
    centreline_count: jnp.ndarray


def _slices_last(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.moveaxis(x, 0, -1)


def render_crop_views(
    key: jax.Array,
    crop: CtaCrop,
    *,
    views: int,
    offsets: bool,
    table: HuTable,
    spacing: tuple[float, float, float],
    box: tuple[int, int, int],
    margin: int = CROP_MARGIN,
) -> jnp.ndarray:
    """`views` synthetic NCCT renderings of the patch, float32 (views, Z, Yp, Xp) in whole HU.

    key: this item's key; view v renders with ``split(key, views)[v]`` through `engine.split_view_key`.
    offsets: random HU offsets (training views) or the table as is (realistic render);
    spacing: (z, y, x) mm of the training grid; box: static plaque box (`plaques.plaque_box`).
    All views and the realistic crop go through one projection and one reconstruction call
    (slices batched in the trailing axis), so the step compiles each once.
    """
    z, yc, xc = crop.hu.shape
    _, yp, xp = crop.lumen.shape
    full = _slices_last(jnp.asarray(crop.sinogram, jnp.float32))  # (A, S, Z)
    n_bins = detector_size(yc, xc)
    band = crop_band(full, crop.centre_offset, n_bins)  # (A, n_bins, Z)
    elsewhere = ~crop_band_mask(full.shape[1], crop.centre_offset, n_bins)[:, :, None]
    ref_low = jnp.where(elsewhere, full, jnp.inf).min(axis=(0, 1))
    ref_high = jnp.where(elsewhere, full, -jnp.inf).max(axis=(0, 1))

    view_keys = jax.random.split(key, views)
    hu_keys, ct_keys, plaque_keys = jax.vmap(split_view_key)(view_keys)
    hu = jnp.asarray(crop.hu, jnp.float32)
    ref = reassign_hu(hu, crop.organs, key, table, offsets=False)
    if offsets:
        drawn = jax.vmap(lambda k: reassign_hu(hu, crop.organs, k, table))(hu_keys)  # (V, Z, Yc, Xc)
        stack = jnp.concatenate([ref[None], drawn]).reshape((views + 1) * z, yc, xc)
    else:
        stack = ref
    sinograms = project(_slices_last(stack))  # (A, n_bins, (1 + V)·Z) or (A, n_bins, Z)
    outside = jnp.tile(band - sinograms[..., :z], views)
    lines = sinograms[..., z:] + outside if offsets else jnp.tile(band, views)  # whole rays, view-major
    low = jnp.minimum(lines.min(axis=(0, 1)), jnp.tile(ref_low, views))
    high = jnp.maximum(lines.max(axis=(0, 1)), jnp.tile(ref_high, views))
    keys = jax.vmap(slice_keys, in_axes=(0, None))(ct_keys, z).reshape(-1)
    noisy = noisy_sinograms(lines, keys, low, high, jnp.tile(crop.photon_scale, views)) - outside
    images = jnp.moveaxis(reconstruct(noisy, (yc, xc)), -1, 0).reshape(views, z, yc, xc)
    images = images[:, :, margin : margin + yp, margin : margin + xp]
    pixel = float(min(spacing[1:]))

    def plaques(image: jnp.ndarray, plaque_key: jax.Array) -> jnp.ndarray:
        drawn = draw_plaques(plaque_key, crop.centreline, crop.centreline_count, pixel)
        return paint_plaques(image, crop.lumen, drawn, spacing, box, crop.origin_mm)[0]

    images = jax.vmap(plaques)(images, plaque_keys)
    return jnp.clip(jnp.round(images), *INT16_RANGE)
