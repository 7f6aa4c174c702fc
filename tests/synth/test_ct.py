"""Simulated CT acquisition against scikit-image's radon/iradon and Poisson statistics."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, stats
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from syncas_jax.synth import ct
from syncas_jax.synth.phantom import make_phantom

ANGLES_DEG = np.arange(180.0)
radon_jit = jax.jit(ct.radon_transform, static_argnames=("method",))
fbp_jit = jax.jit(ct.fbp_reconstruct, static_argnums=1)


def circle(shape: tuple[int, int]) -> np.ndarray:
    """scikit-image's reconstruction circle of an (H, W) slice."""
    n = min(shape)
    y, x = np.ogrid[: shape[0], : shape[1]]
    return (y - shape[0] // 2) ** 2 + (x - shape[1] // 2) ** 2 <= (n // 2) ** 2


def rel_l2(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        ours, ref = ours[mask], ref[mask]
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def shepp_logan() -> np.ndarray:
    return resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True)


@pytest.fixture(scope="module")
def phantom_slice() -> np.ndarray:
    image, labels, _ = make_phantom((12, 96, 96), (1.5, 0.5, 0.5), seed=3)
    z = int(np.argmax((labels == 128).sum(axis=(1, 2))))
    return image[z].astype(np.float64)


@pytest.fixture(scope="module", params=["shepp_logan", "phantom_slice"])
def test_slice(request) -> np.ndarray:
    return request.getfixturevalue(request.param)


def skimage_pair(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sino = radon(image, ANGLES_DEG, circle=False)
    return sino, iradon(sino, ANGLES_DEG, filter_name="ramp", circle=False)


def test_sinogram_and_reconstruction_match_skimage(test_slice):
    ref_sino, ref_rec = skimage_pair(test_slice)
    sino = np.asarray(radon_jit(test_slice)).T
    assert sino.shape == ref_sino.shape == (ct.detector_size(*test_slice.shape), 180)
    assert rel_l2(sino, ref_sino) <= 0.02
    rec = np.asarray(fbp_jit(jnp.asarray(sino.T), test_slice.shape))
    assert rec.shape == test_slice.shape
    assert rel_l2(rec, ref_rec, circle(rec.shape)) <= 0.02


def test_bilinear_projector_and_fbp_reproduce_skimage(shepp_logan):
    ref_sino, ref_rec = skimage_pair(shepp_logan)
    sino = np.asarray(radon_jit(shepp_logan, method="bilinear")).T
    assert rel_l2(sino, ref_sino) <= 1e-5
    # FBP of skimage's own sinogram: same filter, interpolation and scale.
    rec = np.asarray(fbp_jit(jnp.asarray(ref_sino.T), shepp_logan.shape))
    assert rel_l2(rec, ref_rec, circle(rec.shape)) <= 1e-5


def test_non_square_geometry():
    image = np.random.default_rng(0).random((20, 33))
    ref_sino = radon(image, ANGLES_DEG, circle=False)
    sino = np.asarray(ct.radon_transform(image, method="bilinear")).T
    assert sino.shape == ref_sino.shape
    assert rel_l2(sino, ref_sino) <= 1e-5
    ref_rec = iradon(ref_sino, ANGLES_DEG, filter_name="ramp", circle=False)  # (33, 33) square
    rec = np.asarray(ct.fbp_reconstruct(ref_sino.T, (20, 33)))
    top = 33 // 2 - 20 // 2
    np.testing.assert_allclose(rec, ref_rec[top : top + 20], atol=1e-4)


def test_batch_in_trailing_axes_equals_per_slice(shepp_logan):
    stack = np.stack([shepp_logan, shepp_logan[::-1], shepp_logan.T], axis=-1)
    batched = np.asarray(radon_jit(stack))
    for k in range(3):
        np.testing.assert_allclose(batched[..., k], np.asarray(radon_jit(stack[..., k])), rtol=1e-5, atol=1e-3)


def test_ramp_filter_matches_skimage():
    from skimage.transform.radon_transform import _get_fourier_filter

    np.testing.assert_allclose(ct.ramp_filter(256), _get_fourier_filter(256, "ramp")[:, 0])


@pytest.mark.parametrize("sigma", [ct.SIGMA_BEFORE, ct.SIGMA_AFTER])
def test_gaussian_blur_is_imgaussfilt(sigma):
    image = np.random.default_rng(1).normal(size=(24, 30, 2)).astype(np.float32)
    radius = math.ceil(2 * sigma)
    ref = ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="nearest", truncate=radius / sigma)
    np.testing.assert_allclose(np.asarray(ct.gaussian_blur(jnp.asarray(image), sigma)), ref, atol=1e-5)


poisson_jit = jax.jit(ct.poisson_counts)


@pytest.mark.parametrize("mean", [0.3, 2.5, 5.9, 6.0, 40.0, 3e3, 8e4])
def test_poisson_counts_follow_poisson_law(mean):
    n = 100_000
    draws = np.asarray(poisson_jit(jax.random.key(7), jnp.full((n,), mean, jnp.float32)))
    assert np.all(draws == np.rint(draws)) and draws.min() >= 0
    se = math.sqrt(mean / n)
    assert abs(draws.mean() - mean) < 5 * se
    assert abs(draws.var() / mean - 1) < 5 * math.sqrt(2 / n) + 0.01
    if mean < 50:  # whole distribution: total variation distance to the Poisson pmf
        k = np.arange(int(mean + 12 * math.sqrt(mean) + 10))
        empirical = np.bincount(draws.astype(int), minlength=len(k))[: len(k)] / n
        assert 0.5 * np.abs(empirical - stats.poisson.pmf(k, mean)).sum() < 0.01


def test_poisson_noise_statistics_at_photon_count():
    """Variance of the noisy sinogram = mean counts scaled back: (s − min)·span/photons; unbiased."""
    rng = np.random.default_rng(0)
    sino = jnp.asarray(rng.uniform(-500.0, 2500.0, (20, 30)).astype(np.float32))
    photons = 2.0e4
    keys = jax.random.split(jax.random.key(3), 400)
    add_noise = jax.jit(jax.vmap(ct.add_poisson_noise, (None, 0, None)))
    noisy = np.asarray(add_noise(sino, keys, photons))
    s = np.asarray(sino)
    low, span = s.min(), s.max() - s.min()
    counts = (noisy - low) * photons / span
    np.testing.assert_allclose(counts, np.rint(counts), atol=0.05)  # integer photon counts
    expected_var = (s - low) * span / photons
    inside = expected_var > 0
    ratio = noisy.var(axis=0)[inside] / expected_var[inside]
    assert abs(ratio.mean() - 1) < 0.02
    z = (noisy.mean(axis=0) - s)[inside] / np.sqrt(expected_var[inside] / len(keys))
    assert abs(z.mean()) < 0.2 and z.std() < 1.2
    # Dimmer photon counts are noisier, in proportion 1/√photons.
    quiet = np.asarray(add_noise(sino, keys, photons * 4))
    assert 1.8 < (noisy - s).std() / (quiet - s).std() < 2.2
    # A constant sinogram stays as it is.
    flat = jnp.full((5, 7), 3.0)
    np.testing.assert_array_equal(np.asarray(ct.add_poisson_noise(flat, keys[0], photons)), 3.0)


def test_photon_counts_drawn_in_range():
    keys = jax.random.split(jax.random.key(0), 2000)
    photons = np.asarray(jax.vmap(ct.draw_photons)(keys))
    assert photons.min() >= 1e4 and photons.max() <= 1e5
    assert stats.kstest((photons - 1e4) / 9e4, "uniform").pvalue > 1e-3


def test_simulate_volume_deterministic_and_chunk_independent():
    image, _, _ = make_phantom((16, 64, 64), (1.0, 0.5, 0.5), seed=1)
    key = jax.random.key(11)
    full = ct.simulate_volume(image, key, chunk=16)
    again = ct.simulate_volume(image, key, chunk=16)
    chunked = ct.simulate_volume(image, key, chunk=5)
    other = ct.simulate_volume(image, jax.random.key(12), chunk=16)
    assert full.shape == image.shape and full.dtype == np.float32
    np.testing.assert_array_equal(full, again)
    np.testing.assert_allclose(chunked, full, atol=1e-2)
    assert np.abs(other - full).max() > 1.0
    # Noise-free content survives: the simulated slice is close to the σ-blurred input.
    target = ndimage.gaussian_filter(image, (0, 2.0, 2.0), mode="nearest", truncate=2.0)
    body = circle(image.shape[1:])
    assert rel_l2(full[:, body], target[:, body]) < 0.1
    # One slice alone renders as it does inside the volume.
    single = np.asarray(ct.simulate_acquisition(image[4], ct.slice_keys(key, 16)[4]))
    np.testing.assert_allclose(single, full[4], atol=1e-2)


def test_dose_scales_the_photon_counts():
    """dose 1 is the default acquisition bit for bit; a quarter dose doubles the noise std (variance ∝ 1/photons).

    The same keys draw the same photon counts and normal quantiles, so the noise of the two doses differs by the
    Poisson scaling alone; over 16 slices of a uniform disk the std ratio is 2 within a few per cent.
    """
    yy, xx = np.mgrid[:96, :96]
    disk = ((yy - 47.5) ** 2 + (xx - 47.5) ** 2 <= 40**2).astype(np.float32) * 1040.0 - 1000.0  # 40 HU in air
    slices = np.broadcast_to(disk, (16, 96, 96)).copy()
    keys = ct.slice_keys(jax.random.key(3), 16)
    default = np.asarray(ct.simulate_slices(slices, keys))
    np.testing.assert_array_equal(np.asarray(ct.simulate_slices(slices, keys, dose=1.0)), default)
    quarter = np.asarray(ct.simulate_slices(slices, keys, dose=0.25))
    clean = np.asarray(ct.simulate_slices(slices, keys, dose=1e9))  # practically noise-free
    inner = ((yy - 47.5) ** 2 + (xx - 47.5) ** 2 <= 25**2)[None].repeat(16, 0)
    ratio = np.std((quarter - clean)[inner]) / np.std((default - clean)[inner])
    assert 1.85 < ratio < 2.15
