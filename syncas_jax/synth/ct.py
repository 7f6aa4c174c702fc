"""Simulated CT acquisition of axial slices: blur → Radon → Poisson noise → FBP → blur.

Geometry follows scikit-image's `radon` / `iradon(filter_name="ramp")` with
``circle=False`` exactly: the slice is zero-padded to the square of side
``S = ceil(√2·max(H, W))`` around pixel ``(H//2, W//2)``, the detector has ``S``
bins with the rotation axis at bin ``S//2``, the ramp filter is built in Fourier
space on ``max(64, 2**ceil(log2(2S)))`` samples, back-projection interpolates
linearly at ``t = x·cosθ − y·sinθ`` and the result is scaled by ``π / (2·n_angles)``.

Layout. Every function takes one slice ``(H, W)`` or a batch of slices in the
*trailing* axes ``(H, W, *batch)``; sinograms are ``(n_angles, S, *batch)``
(angle-major: the transpose of scikit-image's ``(S, n_angles)``). Carrying the
batch as the last, contiguous axis is what makes the interpolation gathers fast on
CPU (each index copies one vector of slices), so the batched functions are the
vectorised-over-slices form of the single-slice ones (same result per slice).

Projector. ``method="joseph"`` (default) is Joseph's ray-driven projector: for
each angle the ray is stepped through the rows (or columns, for steep angles)
and each row is interpolated linearly, followed by a three-tap detector filter
``[w, 1 − 2w, w]``, ``w = min(cos²θ, sin²θ)/12``, which adds the variance that
scikit-image's bilinear rotate-and-sum has over Joseph's footprint. It agrees with
scikit-image within ~0.3 % (sinogram) and ~1 % (FBP reconstruction) relative L2 and
reads 2 pixels per row crossing instead of 4 per sample of the S×S rotated grid
(≈ 3× fewer reads, and cache-friendly rows). ``method="bilinear"`` reproduces
scikit-image's rotate-with-bilinear-interpolation-and-sum to float precision (slow
on CPU, fine on GPU).

All functions are pure JAX with static shapes; `simulate_slices` is the jitted
boundary and `simulate_volume` loops over slice chunks on the host.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

N_ANGLES = 180
PHOTONS_RANGE = (1.0e4, 1.0e5)  # photon count at the sinogram maximum, one uniform draw per slice
SIGMA_BEFORE = 0.5  # px, Gaussian blur before projection
SIGMA_AFTER = 2.0  # px, Gaussian blur after reconstruction


def default_angles() -> jnp.ndarray:
    """Projection angles 0, 1, …, 179 degrees, in radians, shape (180,)."""
    return jnp.deg2rad(jnp.arange(N_ANGLES, dtype=jnp.float32))


def detector_size(height: int, width: int) -> int:
    """Number of detector bins S for a (height, width) slice (scikit-image, circle=False)."""
    return math.ceil(math.sqrt(2) * max(height, width))


def _flatten_batch(x: jnp.ndarray, core: int) -> tuple[jnp.ndarray, tuple[int, ...]]:
    """Reshape (*core_shape, *batch) to (*core_shape, B); return it with the batch shape."""
    batch = x.shape[core:]
    return x.reshape(x.shape[:core] + (math.prod(batch),)), batch


def _square(image: jnp.ndarray) -> jnp.ndarray:
    """Zero-pad (H, W, B) to (M, M, B), M = max(H, W), keeping pixel (H//2, W//2) at (M//2, M//2)."""
    h, w = image.shape[:2]
    m = max(h, w)
    pad = [(m // 2 - h // 2, m - h - (m // 2 - h // 2)), (m // 2 - w // 2, m - w - (m // 2 - w // 2)), (0, 0)]
    return jnp.pad(image, pad)


def _lerp_rows(source: jnp.ndarray, position: jnp.ndarray) -> jnp.ndarray:
    """Linear interpolation of source (L, B) at float indices `position` (...), zero outside [0, L-1].

    Returns (..., B). `source` is padded by one zero in front and two behind so that clamped
    positions land on zeros.
    """
    padded = jnp.pad(source, ((1, 2), (0, 0)))
    length = source.shape[0]
    p = jnp.clip(position + 1.0, 0.0, length + 1.0)
    i0 = jnp.floor(p)
    frac = (p - i0)[..., None]
    i0 = i0.astype(jnp.int32)
    return (1.0 - frac) * padded[i0] + frac * padded[i0 + 1]


def _grouped(x: jnp.ndarray, group: int) -> jnp.ndarray:
    """Zero-pad the leading axis to a multiple of `group` and split it: (n, ...) → (ceil(n/group), group, ...)."""
    pad = (-x.shape[0]) % group
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape((x.shape[0] // group, group) + x.shape[1:])


def _radon_joseph(image: jnp.ndarray, theta: jnp.ndarray, group: int = 4) -> jnp.ndarray:
    """Joseph projector of square (M, M, B) slices → (A, S, B), plus the footprint correction."""
    m, _, b = image.shape
    s_bins = detector_size(m, m)
    centre = m // 2
    t = jnp.arange(s_bins, dtype=jnp.float32) - s_bins // 2
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    by_rows = jnp.abs(cos) >= jnp.abs(sin)
    # Ray t meets row i (by_rows) at column (t + (i-c)·sin)/cos + c, or column j at row (t - (j-c)·cos)/(-sin) + c.
    slope = jnp.where(by_rows, cos, -sin)
    shear = jnp.where(by_rows, sin, -cos)
    rows, columns = image, jnp.transpose(image, (1, 0, 2))
    offset = jnp.where(by_rows, 0, m + 1)[:, None]  # row or column from the pair [row, 0, column]
    separator = jnp.zeros((1, b), image.dtype)

    def step(acc: jnp.ndarray, inputs: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]) -> tuple[jnp.ndarray, None]:
        for row, column, i in zip(*inputs):  # `group` rows per step: fewer passes over the accumulator
            line = jnp.concatenate([row, separator, column], axis=0)  # (2M + 1, B)
            along = (t[None, :] + (i - centre) * shear[:, None]) / slope[:, None] + centre  # (A, S)
            inside = (along > -1.0) & (along < m)
            position = jnp.where(inside, along + offset, -2.0)
            acc = acc + _lerp_rows(line, position)
        return acc, None

    # Zero rows/columns padding the last group add nothing.
    steps = (_grouped(rows, group), _grouped(columns, group), _grouped(jnp.arange(m, dtype=jnp.float32), group))
    sino, _ = jax.lax.scan(step, jnp.zeros((theta.shape[0], s_bins, b), image.dtype), steps)
    sino = sino / jnp.abs(slope)[:, None, None]
    w = (jnp.minimum(cos**2, sin**2) / 12.0)[:, None, None]
    padded = jnp.pad(sino, ((0, 0), (1, 1), (0, 0)))
    return (1.0 - 2.0 * w) * sino + w * (padded[:, :-2] + padded[:, 2:])


def _radon_bilinear(image: jnp.ndarray, theta: jnp.ndarray) -> jnp.ndarray:
    """scikit-image's projector: rotate (M, M, B) with bilinear interpolation and sum columns → (A, S, B)."""
    m = image.shape[0]
    s_bins = detector_size(m, m)
    shift = s_bins // 2 - m // 2  # padded-frame → image-frame offset
    r = jnp.arange(s_bins, dtype=jnp.float32) - s_bins // 2
    padded = jnp.pad(image, ((1, 2), (1, 2), (0, 0)))

    def one_angle(angle: jnp.ndarray) -> jnp.ndarray:
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        x = cos * r[None, :] + sin * r[:, None] + s_bins // 2 - shift + 1.0
        y = -sin * r[None, :] + cos * r[:, None] + s_bins // 2 - shift + 1.0
        x = jnp.clip(x, 0.0, m + 1.0)
        y = jnp.clip(y, 0.0, m + 1.0)
        x0, y0 = jnp.floor(x), jnp.floor(y)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
        top = (1 - fx) * padded[y0, x0] + fx * padded[y0, x0 + 1]
        bottom = (1 - fx) * padded[y0 + 1, x0] + fx * padded[y0 + 1, x0 + 1]
        return ((1 - fy) * top + fy * bottom).sum(axis=0)

    return jax.lax.map(one_angle, theta)


def radon_transform(image: jnp.ndarray, theta: jnp.ndarray | None = None, method: str = "joseph") -> jnp.ndarray:
    """Parallel-beam projection of slices (H, W, *batch) → sinogram (n_angles, S, *batch).

    theta: angles in radians (default 0…179°). Units: sum of pixel values along each ray
    with unit pixel spacing (as scikit-image).
    """
    theta = default_angles() if theta is None else jnp.asarray(theta, jnp.float32)
    flat, batch = _flatten_batch(jnp.asarray(image, jnp.float32), 2)
    square = _square(flat)
    if method == "joseph":
        sino = _radon_joseph(square, theta)
    elif method == "bilinear":
        sino = _radon_bilinear(square, theta)
    else:
        raise ValueError(f"unknown projector {method!r} (joseph or bilinear)")
    return sino.reshape(sino.shape[:2] + batch)


def crop_ray_shift(centre_offset: jnp.ndarray, theta: jnp.ndarray | None = None) -> jnp.ndarray:
    """Detector shift (A,) in bins from a crop's rays to the full slice's: ray t of the crop is ray
    t + dx·cosθ − dy·sinθ of the full slice, where centre_offset = (dy, dx) is the crop's centre
    pixel (h//2, w//2) minus the full slice's (H//2, W//2), in pixels."""
    theta = default_angles() if theta is None else jnp.asarray(theta, jnp.float32)
    dy, dx = jnp.asarray(centre_offset, jnp.float32)
    return dx * jnp.cos(theta) - dy * jnp.sin(theta)


def crop_band(full: jnp.ndarray, centre_offset: jnp.ndarray, n_bins: int, theta: jnp.ndarray | None = None):
    """The full slice's line integrals along a crop's rays: (A, S_full, B) → (A, n_bins, B).

    full: sinograms of whole slices, detector bin s at t = s − S_full//2; n_bins: the crop's
    detector size; linear interpolation between bins, zero beyond the full detector.
    """
    shift = crop_ray_shift(centre_offset, theta)
    s_full = full.shape[1]
    t = jnp.arange(n_bins, dtype=jnp.float32) - n_bins // 2
    position = t[None, :] + shift[:, None] + s_full // 2  # (A, n_bins)
    inside = (position >= 0) & (position <= s_full - 1)
    position = jnp.where(inside, position, -2.0)
    return jax.vmap(_lerp_rows)(full, position)


def crop_band_mask(
    s_full: int, centre_offset: jnp.ndarray, n_bins: int, theta: jnp.ndarray | None = None
) -> jnp.ndarray:
    """Bool (A, s_full): bins of the full detector within one bin of the crop's band (see `crop_band`)."""
    shift = crop_ray_shift(centre_offset, theta)
    t = jnp.arange(s_full, dtype=jnp.float32)[None, :] - s_full // 2 - shift[:, None]
    return (t >= -(n_bins // 2) - 1) & (t <= n_bins - n_bins // 2)


def ramp_filter(size: int) -> np.ndarray:
    """scikit-image's ramp filter in Fourier space, shape (size,), from the band-limited spatial kernel."""
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    kernel = np.zeros(size)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (np.pi * n) ** 2
    return 2.0 * np.real(np.fft.fft(kernel))


def fbp_reconstruct(
    sinogram: jnp.ndarray, output_shape: tuple[int, int], theta: jnp.ndarray | None = None, group: int = 4
) -> jnp.ndarray:
    """Filtered back-projection (ramp filter, linear interpolation) of (A, S, *batch) → (H, W, *batch).

    output_shape: the (H, W) of the projected slice; reconstruction is on the centred
    max(H, W) square (scikit-image's default output size), then cropped. `group`
    angles are back-projected per loop step (speed only).
    """
    theta = default_angles() if theta is None else jnp.asarray(theta, jnp.float32)
    flat, batch = _flatten_batch(jnp.asarray(sinogram, jnp.float32), 2)
    n_angles, s_bins, b = flat.shape
    padded_size = max(64, int(2 ** math.ceil(math.log2(2 * s_bins))))
    response = jnp.asarray(ramp_filter(padded_size)[: padded_size // 2 + 1], jnp.float32)
    spectrum = jnp.fft.rfft(flat, n=padded_size, axis=1) * response[None, :, None]
    filtered = jnp.fft.irfft(spectrum, n=padded_size, axis=1)[:, :s_bins].astype(jnp.float32)

    h, w = output_shape
    m = max(h, w)
    grid = jnp.arange(m, dtype=jnp.float32) - m // 2
    rows = grid[m // 2 - h // 2 : m // 2 - h // 2 + h]
    cols = grid[m // 2 - w // 2 : m // 2 - w // 2 + w]

    def accumulate(acc: jnp.ndarray, inputs: tuple[jnp.ndarray, jnp.ndarray]) -> tuple[jnp.ndarray, None]:
        for projection, angle in zip(*inputs):  # `group` angles per step: fewer passes over the image
            t = cols[None, :] * jnp.cos(angle) - rows[:, None] * jnp.sin(angle) + s_bins // 2
            t = jnp.where((t >= 0) & (t <= s_bins - 1), t, -2.0)  # np.interp(left=0, right=0)
            acc = acc + _lerp_rows(projection, t)
        return acc, None

    # Zero projections padding the last group add nothing.
    steps = (_grouped(filtered, group), _grouped(theta, group))
    image, _ = jax.lax.scan(accumulate, jnp.zeros((h, w, b), jnp.float32), steps)
    image = image * (math.pi / (2 * n_angles))
    return image.reshape((h, w) + batch)


POISSON_EXACT_BELOW = 6.0  # mean counts under which Poisson draws are exact (inversion)
_POISSON_INVERSION_STEPS = 24  # P(X >= 24 | mean 6) < 1e-8


def poisson_counts(key: jax.Array, mean: jnp.ndarray) -> jnp.ndarray:
    """Poisson draws (float, same shape) with the given means, one standard normal per element.

    Means < 6: exact, by inverting the Poisson CDF at Φ(z). Larger means: the
    Cornish–Fisher expansion of the Poisson quantile at z (mean, variance and skewness
    to O(1/mean)), rounded; its total-variation distance from the Poisson law is < 0.35 %
    at mean 6 and falls as 1/mean. Branch-free, so ~15× faster on CPU than
    `jax.random.poisson`, whose rejection loop would dominate the acquisition.
    """
    z = jax.random.normal(key, mean.shape, mean.dtype)
    small = jnp.minimum(mean, POISSON_EXACT_BELOW)
    u = jax.scipy.special.ndtr(z)
    term = jnp.exp(-small)
    cdf = term
    count = jnp.zeros_like(mean)
    for j in range(_POISSON_INVERSION_STEPS):
        count = count + (u > cdf)
        term = term * small / (j + 1)
        cdf = cdf + term
    root = jnp.sqrt(jnp.maximum(mean, POISSON_EXACT_BELOW))
    z3 = z * z * z
    quantile = mean + root * z + (z * z - 1.0) / 6.0 + ((z3 - 3.0 * z) / 24.0 - (2.0 * z3 - 5.0 * z) / 36.0) / root
    large = jnp.maximum(jnp.floor(quantile + 0.5), 0.0)
    return jnp.where(mean < POISSON_EXACT_BELOW, count, large)


def add_poisson_noise_in_window(
    sinogram: jnp.ndarray, key: jax.Array, photons: jnp.ndarray | float, low: jnp.ndarray, high: jnp.ndarray
) -> jnp.ndarray:
    """Photon noise on one sinogram (A, S) whose values `low`…`high` map to 0…`photons` counts.

    Shift by −low, scale by photons / (high − low), draw Poisson counts, scale and shift back.
    With high == low the sinogram is returned unchanged. `add_poisson_noise` uses the
    sinogram's own min and max; online synthesis passes those of the whole slice.
    """
    span = high - low
    scale = jnp.where(span > 0, photons / jnp.where(span > 0, span, 1.0), 0.0)
    counts = poisson_counts(key, (sinogram - low) * scale)
    return jnp.where(span > 0, counts / jnp.where(scale > 0, scale, 1.0) + low, sinogram)


def add_poisson_noise(sinogram: jnp.ndarray, key: jax.Array, photons: jnp.ndarray | float) -> jnp.ndarray:
    """Photon noise on one sinogram (A, S): shift min to 0, scale max to `photons`, Poisson, undo.

    A constant sinogram is returned unchanged.
    """
    return add_poisson_noise_in_window(sinogram, key, photons, sinogram.min(), sinogram.max())


def draw_photons(key: jax.Array) -> jnp.ndarray:
    """A slice's photon count at the sinogram maximum: uniform in [1e4, 1e5] (scalar)."""
    return jax.random.uniform(key, (), minval=PHOTONS_RANGE[0], maxval=PHOTONS_RANGE[1])


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1D Gaussian of radius ceil(2σ) (MATLAB imgaussfilt's default size)."""
    radius = math.ceil(2 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(image: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """Separable in-plane Gaussian blur of (H, W, *batch), σ in pixels, replicate borders (imgaussfilt)."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(float(weight) * jax.lax.slice_in_dim(padded, k, k + n, axis=axis) for k, weight in enumerate(kernel))
    return out


def project(stack: jnp.ndarray, method: str = "joseph") -> jnp.ndarray:
    """First half of the acquisition: blur σ 0.5 → Radon at 0…179°, (H, W, *batch) HU → (A, S, *batch)."""
    return radon_transform(gaussian_blur(jnp.asarray(stack, jnp.float32), SIGMA_BEFORE), method=method)


def noisy_sinograms(
    sinograms: jnp.ndarray,
    keys: jax.Array,
    low: jnp.ndarray,
    high: jnp.ndarray,
    photon_scale: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Photon noise on a batch of sinograms (A, S, B), one key per slice (B,), windows low/high (B,).

    Per slice the key splits into (photon-count key, noise key); the photon count is drawn
    uniformly in [1e4, 1e5] and multiplied by photon_scale (B,) when given.
    """

    def noisy(sinogram: jnp.ndarray, key: jax.Array, lo: jnp.ndarray, hi: jnp.ndarray, scale: jnp.ndarray):
        count_key, noise_key = jax.random.split(key)
        photons = draw_photons(count_key) if photon_scale is None else draw_photons(count_key) * scale
        return add_poisson_noise_in_window(sinogram, noise_key, photons, lo, hi)

    scale = jnp.ones(keys.shape, jnp.float32) if photon_scale is None else photon_scale
    return jax.vmap(noisy, in_axes=(-1, 0, 0, 0, 0), out_axes=-1)(sinograms, keys, low, high, scale)


def reconstruct(sinograms: jnp.ndarray, output_shape: tuple[int, int]) -> jnp.ndarray:
    """Second half of the acquisition: ramp FBP → blur σ 2, (A, S, *batch) → (H, W, *batch) HU."""
    return gaussian_blur(fbp_reconstruct(sinograms, output_shape), SIGMA_AFTER)


@partial(jax.jit, static_argnames=("method",))
def simulate_slices(
    slices: jnp.ndarray, keys: jax.Array, method: str = "joseph", dose: jnp.ndarray | float = 1.0
) -> jnp.ndarray:
    """CT acquisition of a batch of axial slices (B, H, W) in HU with one key per slice (B,) → (B, H, W) HU.

    Per slice: blur σ 0.5 → Radon at 0…179° → Poisson noise at a photon count drawn uniformly
    in [1e4, 1e5] × `dose` (the tube current's share: 0.25 is a quarter-dose scan), relative to
    the slice's own sinogram min and max → ramp FBP → blur σ 2. Each slice's result depends only
    on its pixels and key.
    """
    h, w = slices.shape[1:]
    sino = project(jnp.moveaxis(jnp.asarray(slices, jnp.float32), 0, -1), method)  # (A, S, B)
    scale = jnp.full(keys.shape, dose, jnp.float32)
    sino = noisy_sinograms(sino, keys, sino.min(axis=(0, 1)), sino.max(axis=(0, 1)), scale)
    return jnp.moveaxis(reconstruct(sino, (h, w)), -1, 0)


def simulate_acquisition(image: jnp.ndarray, key: jax.Array, method: str = "joseph") -> jnp.ndarray:
    """CT acquisition of one axial slice (H, W) in HU → (H, W) HU (see `simulate_slices`)."""
    return simulate_slices(jnp.asarray(image)[None], jnp.asarray(key)[None], method=method)[0]


def slice_keys(key: jax.Array, n_slices: int) -> jax.Array:
    """One key per slice index, (n_slices,): fold_in(key, z), independent of chunking."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n_slices))


def simulate_volume(
    volume: np.ndarray, key: jax.Array, chunk: int = 32, method: str = "joseph", dose: float = 1.0
) -> np.ndarray:
    """CT acquisition of every axial slice of a (Z, H, W) HU volume → float32 (Z, H, W) HU.

    Slices are processed `chunk` at a time (one compiled shape; the last chunk is
    zero-padded), which bounds memory; slice z uses key fold_in(key, z). dose: photon counts × dose.
    """
    volume = np.asarray(volume, np.float32)
    n = volume.shape[0]
    chunk = max(1, min(chunk, n))
    keys = slice_keys(key, n + (-n) % chunk)
    out = np.empty_like(volume)
    for start in range(0, n, chunk):
        block = volume[start : start + chunk]
        stop = start + block.shape[0]
        if block.shape[0] < chunk:
            block = np.concatenate([block, np.zeros((chunk - block.shape[0],) + block.shape[1:], np.float32)])
        result = simulate_slices(block, keys[start : start + chunk], method=method, dose=dose)
        out[start:stop] = np.asarray(result)[: stop - start]
    return out
