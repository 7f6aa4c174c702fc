"""Training augmentation in JAX: jitted, vmapped over the batch, run on the device after the loader.

nnU-Net's (batchgenerators) "moreDA" pipeline with SynCAS' settings, in its order:
spatial (rotation ±30° p 0.2, scaling 0.85–1.25 p 0.2, mirroring each axis p 0.5),
Gaussian noise (σ 0–0.1, p 0.1), Gaussian blur (σ 0.5–1 voxel, p 0.2 × 0.5), brightness
(×0.75–1.25, p 0.15), contrast (0.75–1.25, p 0.15), low-resolution simulation (zoom
0.5–1, p 0.25 × 0.5), inverted gamma (0.7–1.5, p 0.1), gamma (0.7–1.5, p 0.3).

* Geometry is drawn per batch item and shared by its views and its label: one
  resampling with ``jax.scipy.ndimage.map_coordinates`` — order 1 for images (0
  outside), order 0 for labels (-1 outside), so branch ids are never blended.
  Mirroring is folded into the same coordinate map (exact). Items without rotation
  or scaling map onto the exact voxel grid, so they are copied unchanged.
* Intensity transforms are drawn separately per view: each view is treated as a
  single-channel nnU-Net sample, so "p 0.2 × 0.5" (p_per_sample × p_per_channel) is
  the chance that a view is blurred.

Where we differ from batchgenerators (all documented in `AugmentConfig`):
* rotations and scaling act in millimetres (``spacing``) rather than voxel indices,
  which with 3 mm × 0.35 mm voxels would shear; ``spacing=None`` restores voxel space;
* the low-resolution simulation upsamples linearly (batchgenerators: cubic spline);
* noise: batchgenerators passes its drawn "variance" to ``np.random.normal`` as the
  standard deviation; we do the same and call the range ``noise_sigma``.
Patches keep their size (``out_shape`` may crop the centre of a larger input patch,
as nnU-Net's enlarged initial patch); samples falling outside the input are padding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from syncas_jax.data.layout import TARGET_SPACING

Pair = tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per batch item for geometry, per view for intensity) and ranges.

    rotation_deg: largest |angle| about the z, y and x axes (degrees); all three are drawn
        when an item is rotated. spacing: (z, y, x) mm in which rotation/scaling act
        (None: voxel space, as batchgenerators). scale_range: factor on the sampled
        extent (> 1 zooms out), drawn below 1 with probability 0.5 as batchgenerators.
    noise_sigma: standard deviation range of additive Gaussian noise (normalised units).
    blur_sigma: Gaussian σ range in voxels; p_blur_channel: nnU-Net's p_per_channel.
    lowres_zoom: downsampling factor range; p_lowres_channel: nnU-Net's p_per_channel.
    gamma_range: exponent range, drawn below 1 with probability 0.5; stats are retained.
    """

    p_rotation: float = 0.2
    rotation_deg: tuple[float, float, float] = (30.0, 30.0, 30.0)
    p_scale: float = 0.2
    scale_range: Pair = (0.85, 1.25)
    spacing: tuple[float, float, float] | None = TARGET_SPACING
    p_mirror: float = 0.5
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_noise: float = 0.1
    noise_sigma: Pair = (0.0, 0.1)
    p_blur: float = 0.2
    p_blur_channel: float = 0.5
    blur_sigma: Pair = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: Pair = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: Pair = (0.75, 1.25)
    p_lowres: float = 0.25
    p_lowres_channel: float = 0.5
    lowres_zoom: Pair = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: Pair = (0.7, 1.5)


class SpatialParams(NamedTuple):
    """Per item: matrix (B, 3, 3) output→input voxel offsets (mirroring included);
    resample_on (B,) rotated or scaled (else only mirrored, done exactly); flips (B, 3)."""

    matrix: jax.Array
    resample_on: jax.Array
    flips: jax.Array


class IntensityParams(NamedTuple):
    """Per view (B, V): `*_on` bool switches and the drawn values; noise_key one key per view."""

    noise_on: jax.Array
    noise_sigma: jax.Array
    noise_key: jax.Array
    blur_on: jax.Array
    blur_sigma: jax.Array
    brightness_on: jax.Array
    brightness: jax.Array
    contrast_on: jax.Array
    contrast: jax.Array
    lowres_on: jax.Array
    lowres_zoom: jax.Array
    gamma_inverted_on: jax.Array
    gamma_inverted: jax.Array
    gamma_on: jax.Array
    gamma: jax.Array


class AugmentParams(NamedTuple):
    """Everything `sample_params` draws for one batch; `apply_params` takes hand-made ones too."""

    spatial: SpatialParams
    intensity: IntensityParams


# ---------------------------------------------------------------------------- sampling


def _between(u: jax.Array, bounds: Pair) -> jax.Array:
    """Map uniforms u in [0, 1) to [lo, hi)."""
    return bounds[0] + u * (bounds[1] - bounds[0])


def _below_or_above_one(side: jax.Array, u: jax.Array, bounds: Pair) -> jax.Array:
    """batchgenerators' draw for contrast/gamma/scale: half the time in [lo, 1), else in [max(lo, 1), hi]."""
    lo, hi = bounds
    below = _between(u, (lo, min(1.0, hi)))
    above = _between(u, (max(lo, 1.0), hi))
    return jnp.where((side < 0.5) & (lo < 1.0), below, above)


def rotation_matrix(angles: jax.Array) -> jax.Array:
    """(3, 3) rotation of (z, y, x) vectors by angles (radians) about the z, then y, then x axis."""
    cz, cy, cx = jnp.cos(angles)
    sz, sy, sx = jnp.sin(angles)
    one, zero = jnp.ones_like(cz), jnp.zeros_like(cz)
    about_z = jnp.array([[one, zero, zero], [zero, cz, -sz], [zero, sz, cz]])
    about_y = jnp.array([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    about_x = jnp.array([[cx, -sx, zero], [sx, cx, zero], [zero, zero, one]])
    return about_z @ about_y @ about_x


def spatial_matrix(
    angles: jax.Array, scale: jax.Array, flips: jax.Array, spacing: tuple[float, float, float] | None
) -> jax.Array:
    """(3, 3) map from output to input voxel offsets: mirror, then rotate and scale in mm.

    angles: (3,) radians about z, y, x; scale: scalar; flips: (3,) bool (mirror that axis).
    """
    physical = rotation_matrix(angles) * scale
    if spacing is not None:
        mm = jnp.asarray(spacing, jnp.float32)
        physical = physical * mm[None, :] / mm[:, None]  # diag(1/mm) · R · diag(mm)
    return physical * jnp.where(flips, -1.0, 1.0)[None, :]


def sample_params(key: jax.Array, batch: int, views: int, config: AugmentConfig = AugmentConfig()) -> AugmentParams:
    """Draw every random choice of one batch (B items × V views)."""
    k_uniform, k_noise = jax.random.split(key)
    # One uniform per choice from a single RNG call (each threefry call costs seconds of XLA compile on CPU).
    flat = jax.random.uniform(k_uniform, (10 * batch + 19 * batch * views,))
    g = flat[: 10 * batch].reshape(10, batch)
    u = flat[10 * batch :].reshape(19, batch, views)
    rotate, scale_on = g[0] < config.p_rotation, g[1] < config.p_scale
    limits = jnp.deg2rad(jnp.asarray(config.rotation_deg, jnp.float32))
    angles = (2.0 * g[2:5].T - 1.0) * limits * rotate[:, None]
    scale = jnp.where(scale_on, _below_or_above_one(g[5], g[6], config.scale_range), 1.0)
    allowed = jnp.isin(jnp.arange(3), jnp.asarray(config.mirror_axes, jnp.int32))
    mirror_draws = g[7:10].T
    flips = (mirror_draws < config.p_mirror) & allowed
    full = jax.vmap(spatial_matrix, (0, 0, 0, None))(angles, scale, flips, config.spacing)
    mirror_only = jax.vmap(lambda f: jnp.diag(jnp.where(f, -1.0, 1.0)))(flips)
    resample_on = rotate | scale_on
    spatial = SpatialParams(jnp.where(resample_on[:, None, None], full, mirror_only), resample_on, flips)
    intensity = IntensityParams(
        noise_on=u[0] < config.p_noise,
        noise_sigma=_between(u[1], config.noise_sigma),
        noise_key=jax.random.split(k_noise, (batch, views)),
        blur_on=(u[2] < config.p_blur) & (u[3] < config.p_blur_channel),
        blur_sigma=_between(u[4], config.blur_sigma),
        brightness_on=u[5] < config.p_brightness,
        brightness=_between(u[6], config.brightness_range),
        contrast_on=u[7] < config.p_contrast,
        contrast=_below_or_above_one(u[8], u[9], config.contrast_range),
        lowres_on=(u[10] < config.p_lowres) & (u[11] < config.p_lowres_channel),
        lowres_zoom=_between(u[12], config.lowres_zoom),
        gamma_inverted_on=u[13] < config.p_gamma_inverted,
        gamma_inverted=_below_or_above_one(u[14], u[15], config.gamma_range),
        gamma_on=u[16] < config.p_gamma,
        gamma=_below_or_above_one(u[17], u[18], config.gamma_range),
    )
    return AugmentParams(spatial, intensity)


# ---------------------------------------------------------------------------- geometry


def warp(
    views: jax.Array, label: jax.Array, matrix: jax.Array, out_shape: tuple[int, int, int] | None = None
) -> tuple[jax.Array, jax.Array]:
    """Resample one item: views (V, Z, Y, X) order 1 (0 outside), label (Z, Y, X) order 0 (-1 outside).

    Output voxel o samples the input at c_in + matrix · (o - c_out), c = the grid centres.
    """
    in_shape = label.shape
    out_shape = tuple(in_shape) if out_shape is None else tuple(out_shape)
    offsets = [jnp.arange(n, dtype=jnp.float32) - (n - 1) / 2 for n in out_shape]
    grid = jnp.meshgrid(*offsets, indexing="ij")
    # Elementwise products, not a matmul: exact for mirror-only matrices on every backend.
    coords = [
        (in_shape[i] - 1) / 2 + matrix[i, 0] * grid[0] + matrix[i, 1] * grid[1] + matrix[i, 2] * grid[2]
        for i in range(3)
    ]
    image = jax.vmap(lambda v: map_coordinates(v, coords, order=1, mode="constant", cval=0.0))(views)
    labels = map_coordinates(label, coords, order=0, mode="constant", cval=-1)
    return image.astype(views.dtype), labels.astype(label.dtype)


def mirror(
    views: jax.Array, label: jax.Array, flips: jax.Array, out_shape: tuple[int, int, int] | None = None
) -> tuple[jax.Array, jax.Array]:
    """`warp` for a mirror-only matrix, done exactly by indexing: centre crop to out_shape, then flip."""
    if out_shape is not None:
        region = tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(label.shape, out_shape))
        views, label = views[(slice(None), *region)], label[region]
    for axis in range(3):
        views = jnp.where(flips[axis], jnp.flip(views, axis + 1), views)
        label = jnp.where(flips[axis], jnp.flip(label, axis), label)
    return views, label


# --------------------------------------------------------------------------- intensity


def _along_axes(x: jax.Array, operators: list[jax.Array]) -> jax.Array:
    """Apply an (n, n) linear operator along each axis of x (Z, Y, X): separable filters as matmuls."""
    x = jnp.einsum("az,zyx->ayx", operators[0], x, precision=jax.lax.Precision.HIGHEST)
    x = jnp.einsum("by,zyx->zbx", operators[1], x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("cx,zyx->zyc", operators[2], x, precision=jax.lax.Precision.HIGHEST)


def _gaussian_operator(n: int, sigma: jax.Array, radius: int) -> jax.Array:
    """(n, n) Gaussian filter (σ voxels, truncated at `radius`) with scipy's "reflect" boundary."""
    taps = jnp.arange(-radius, radius + 1)
    weights = jnp.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    source = jnp.arange(n)[:, None] + taps[None, :]  # (n, taps)
    period = 2 * n
    source = jnp.mod(source, period)
    source = jnp.where(source >= n, period - 1 - source, source)  # d c b a | a b c d | d c b a
    return (weights[None, :, None] * (source[:, :, None] == jnp.arange(n))).sum(axis=1)


def _blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Gaussian blur, σ voxels on every axis, reflect boundary (scipy.ndimage.gaussian_filter)."""
    return _along_axes(x, [_gaussian_operator(n, sigma, radius) for n in x.shape])


def _low_resolution_operator(n: int, zoom: jax.Array) -> jax.Array:
    """(n, n): nearest downsampling to round(n·zoom) voxels, linear upsampling back (pixel centres, edge)."""
    m = jnp.maximum(jnp.round(n * zoom), 1.0)
    u = jnp.clip((jnp.arange(n, dtype=jnp.float32) + 0.5) * m / n - 0.5, 0.0, m - 1)
    u0 = jnp.floor(u)
    u1 = jnp.minimum(u0 + 1, m - 1)
    w = (u - u0)[:, None]

    def source(j: jax.Array) -> jax.Array:
        return jnp.clip(jnp.floor((j + 0.5) * n / m), 0, n - 1).astype(jnp.int32)[:, None] == jnp.arange(n)

    return (1 - w) * source(u0) + w * source(u1)


def _low_resolution(x: jax.Array, zoom: jax.Array) -> jax.Array:
    """batchgenerators' low-resolution simulation (one zoom for all axes), linear upsampling."""
    return _along_axes(x, [_low_resolution_operator(n, zoom) for n in x.shape])


def _contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
    """batchgenerators augment_contrast(preserve_range=True)."""
    mean = x.mean()
    return jnp.clip((x - mean) * factor + mean, x.min(), x.max())


def _gamma(x: jax.Array, gamma: jax.Array, invert: bool) -> jax.Array:
    """batchgenerators augment_gamma(retain_stats=True), optionally on the inverted image."""
    eps = 1e-7
    x = -x if invert else x
    mean, std = x.mean(), x.std()
    low = x.min()
    span = x.max() - low + eps
    y = ((x - low) / span) ** gamma * span + low
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return -y if invert else y


def _intensity(x: jax.Array, p: IntensityParams, config: AugmentConfig) -> jax.Array:
    """All intensity transforms of one view x (Z, Y, X); p holds that view's scalars. Skipped ones cost nothing."""
    radius = max(1, int(4.0 * config.blur_sigma[1] + 0.5))
    steps = [
        (p.noise_on, lambda x: x + p.noise_sigma * jax.random.normal(p.noise_key, x.shape, x.dtype)),
        (p.blur_on, lambda x: _blur(x, p.blur_sigma, radius)),
        (p.brightness_on, lambda x: x * p.brightness),
        (p.contrast_on, lambda x: _contrast(x, p.contrast)),
        (p.lowres_on, lambda x: _low_resolution(x, p.lowres_zoom)),
        (p.gamma_inverted_on, lambda x: _gamma(x, p.gamma_inverted, invert=True)),
        (p.gamma_on, lambda x: _gamma(x, p.gamma, invert=False)),
    ]
    for on, fn in steps:
        x = jax.lax.cond(on, fn, lambda x: x, x)
    return x


def apply_params(
    params: AugmentParams,
    views: jax.Array,
    label: jax.Array,
    config: AugmentConfig = AugmentConfig(),
    out_shape: tuple[int, int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Apply drawn parameters to views (B, V, Z, Y, X) float and label (B, Z, Y, X) int.

    Items and views are processed one after another (lax.map) so that a transform
    costs only where it was drawn; each step is vectorised over the voxels.
    out_shape: spatial output size ≤ the input's, differing by an even number of voxels.
    """
    if out_shape is not None:
        out_shape = tuple(int(n) for n in out_shape)
        if any(m > n or (n - m) % 2 for n, m in zip(label.shape[1:], out_shape)):
            raise ValueError(f"out_shape {out_shape} must not exceed {label.shape[1:]} and differ by even sizes")

    def geometry(item: tuple) -> tuple[jax.Array, jax.Array]:
        v, lab, p = item
        return jax.lax.cond(
            p.resample_on, lambda: warp(v, lab, p.matrix, out_shape), lambda: mirror(v, lab, p.flips, out_shape)
        )

    views, label = jax.lax.map(geometry, (views, label, params.spatial))
    batch, num_views = views.shape[:2]
    flat = jax.tree.map(lambda a: a.reshape((batch * num_views, *a.shape[2:])), (views, params.intensity))
    views = jax.lax.map(lambda item: _intensity(*item, config), flat).reshape(views.shape)
    return views, label


@functools.partial(jax.jit, static_argnames=("config", "out_shape"))
def augment_batch(
    key: jax.Array,
    views: jax.Array,
    label: jax.Array,
    config: AugmentConfig = AugmentConfig(),
    out_shape: tuple[int, int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Augment a batch: views (B, V, Z, Y, X) float32, label (B, Z, Y, X) int16 → same shapes
    (spatial size `out_shape` if given, a centre crop of the transformed input). Pure; jitted."""
    params = sample_params(key, views.shape[0], views.shape[1], config)
    return apply_params(params, views, label, config, out_shape)
