"""The data engine on training patches, inside the jitted train step (online synthesis, design §10).

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
not the slice's. On the phantom, noise drawn naively on a crop is 0.37× the whole slice's, and
1.31× with the slice's min/max but the crop's rays (design §10).

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
All of them go through one `ct.project` and one `ct.reconstruct` call per batch.
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


def _crop_rays(sinogram: jnp.ndarray, centre_offset: jnp.ndarray, n_bins: int):
    """One item: (band (A, n_bins, Z) of its slices' whole-slice sinograms (Z, A, S) along the crop's rays,
    min (Z,) and max (Z,) of those sinograms over the other rays)."""
    full = _slices_last(jnp.asarray(sinogram, jnp.float32))  # (A, S, Z)
    band = crop_band(full, centre_offset, n_bins)
    elsewhere = ~crop_band_mask(full.shape[1], centre_offset, n_bins)[:, :, None]
    low = jnp.where(elsewhere, full, jnp.inf).min(axis=(0, 1))
    high = jnp.where(elsewhere, full, -jnp.inf).max(axis=(0, 1))
    return band, low, high


def render_crops(
    keys: jax.Array,
    crops: CtaCrop,
    *,
    views: int,
    offsets: bool,
    table: HuTable,
    spacing: tuple[float, float, float],
    box: tuple[int, int, int],
    margin: int = CROP_MARGIN,
) -> jnp.ndarray:
    """`views` synthetic NCCT renderings of each of B patches, float32 (B, views, Z, Yp, Xp) in whole HU.

    keys: (B,) one key per item; view v of item i renders with ``split(keys[i], views)[v]`` through
    `engine.split_view_key`. crops: a `CtaCrop` with a leading batch axis on every field.
    offsets: random HU offsets (training views) or the table as is (realistic render);
    spacing: (z, y, x) mm of the training grid; box: static plaque box (`plaques.plaque_box`).
    Every slice of every item and view goes through one projection and one reconstruction call,
    batched in the trailing axis (what makes the engine's gathers fast, `synth.ct`).
    """
    b, z, yc, xc = crops.hu.shape
    yp, xp = crops.lumen.shape[2:]
    n_bins = detector_size(yc, xc)
    band, ref_low, ref_high = jax.vmap(_crop_rays, in_axes=(0, 0, None), out_axes=(2, 0, 0))(
        crops.sinogram, crops.centre_offset, n_bins
    )  # band (A, n_bins, B, Z); ref_low, ref_high (B, Z)

    per_view = jax.vmap(lambda k: jax.random.split(k, views))(keys)  # (B, V)
    hu_keys, ct_keys, plaque_keys = jax.vmap(jax.vmap(split_view_key))(per_view)
    hu = jnp.asarray(crops.hu, jnp.float32)
    ref = jax.vmap(lambda h, o: reassign_hu(h, o, keys[0], table, offsets=False))(hu, crops.organs)
    if offsets:
        drawn = jax.vmap(jax.vmap(lambda h, o, k: reassign_hu(h, o, k, table), in_axes=(None, None, 0)))(
            hu, crops.organs, hu_keys
        )  # (B, V, Z, Yc, Xc)
        stack = jnp.concatenate([ref[:, None], drawn], axis=1)
    else:
        stack = ref[:, None]
    sinograms = project(jnp.moveaxis(stack, (3, 4), (0, 1)))  # (A, n_bins, B, 1 + V or 1, Z)
    outside = (band - sinograms[:, :, :, 0])[:, :, :, None]  # (A, n_bins, B, 1, Z)
    lines = sinograms[:, :, :, 1:] + outside if offsets else jnp.broadcast_to(band[:, :, :, None], outside.shape)
    lines = jnp.broadcast_to(lines, (*band.shape[:3], views, z))  # the whole rays, (A, n_bins, B, V, Z)
    low = jnp.minimum(lines.min(axis=(0, 1)), ref_low[:, None])  # (B, V, Z)
    high = jnp.maximum(lines.max(axis=(0, 1)), ref_high[:, None])
    slice_key = jax.vmap(jax.vmap(slice_keys, in_axes=(0, None)), in_axes=(0, None))(ct_keys, z)  # (B, V, Z)
    photons = jnp.broadcast_to(crops.photon_scale[:, None], (b, views, z))
    flat = lines.reshape(*lines.shape[:2], -1)
    noisy = noisy_sinograms(flat, slice_key.reshape(-1), low.reshape(-1), high.reshape(-1), photons.reshape(-1))
    noisy = noisy.reshape(lines.shape) - outside
    images = jnp.moveaxis(reconstruct(noisy, (yc, xc)), (0, 1), (3, 4))  # (B, V, Z, Yc, Xc)
    images = images[..., margin : margin + yp, margin : margin + xp]
    pixel = float(min(spacing[1:]))

    def plaques(image: jnp.ndarray, plaque_key: jax.Array, crop: CtaCrop) -> jnp.ndarray:
        drawn = draw_plaques(plaque_key, crop.centreline, crop.centreline_count, pixel)
        return paint_plaques(image, crop.lumen, drawn, spacing, box, crop.origin_mm)[0]

    per_view = jax.vmap(plaques, in_axes=(0, 0, None))
    images = jax.vmap(per_view)(images, plaque_keys, crops)
    return jnp.clip(jnp.round(images), *INT16_RANGE)
