"""On-device augmentation: identity, geometry shared by views and label, label ids, probabilities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from syncas_jax.data.augment import (
    AugmentConfig,
    apply_params,
    augment_batch,
    sample_params,
    spatial_matrix,
)

OFF = AugmentConfig(
    p_rotation=0,
    p_scale=0,
    p_mirror=0,
    p_noise=0,
    p_blur=0,
    p_brightness=0,
    p_contrast=0,
    p_lowres=0,
    p_gamma_inverted=0,
    p_gamma=0,
    spacing=(1.0, 1.0, 1.0),
)
EVERYTHING = AugmentConfig(
    p_rotation=1,
    p_scale=1,
    p_noise=1,
    p_blur=1,
    p_blur_channel=1,
    p_brightness=1,
    p_contrast=1,
    p_lowres=1,
    p_lowres_channel=1,
    p_gamma_inverted=1,
    p_gamma=1,
    spacing=(1.0, 1.0, 1.0),
)
SHAPE = (12, 24, 24)
apply = jax.jit(apply_params, static_argnames=("config", "out_shape"))
sample = jax.jit(sample_params, static_argnums=(1, 2, 3))


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    views = rng.normal(size=(2, 2, *SHAPE)).astype(np.float32)
    label = rng.choice(np.array([0, 1, 2, 7, 300], np.int16), size=(2, *SHAPE), p=[0.6, 0.1, 0.1, 0.1, 0.1])
    return views, label


def params_with(batch_size: int, matrix=None, resample_on=None, flips=None, **intensity):
    """Parameters that do nothing, with the given fields replaced."""
    params = sample(jax.random.key(0), batch_size, 2, OFF)
    spatial = params.spatial
    if matrix is not None:
        spatial = spatial._replace(matrix=jnp.broadcast_to(jnp.asarray(matrix, jnp.float32), (batch_size, 3, 3)))
    if resample_on is not None:
        spatial = spatial._replace(resample_on=jnp.full((batch_size,), resample_on))
    if flips is not None:
        spatial = spatial._replace(flips=jnp.broadcast_to(jnp.asarray(flips), (batch_size, 3)))
    values = {k: jnp.broadcast_to(jnp.asarray(v), (batch_size, 2)) for k, v in intensity.items()}
    return params._replace(spatial=spatial, intensity=params.intensity._replace(**values))


def test_identity_config_and_identity_resampling_are_exact(batch):
    views, label = batch
    out_views, out_label = apply(sample(jax.random.key(3), 2, 2, OFF), views, label, OFF)
    np.testing.assert_array_equal(np.asarray(out_views), views)
    np.testing.assert_array_equal(np.asarray(out_label), label)
    assert out_views.dtype == jnp.float32 and out_label.dtype == jnp.int16
    # The interpolating path with an identity matrix lands on the voxel grid exactly.
    out_views, out_label = apply(params_with(2, matrix=np.eye(3), resample_on=True), views, label, OFF)
    np.testing.assert_array_equal(np.asarray(out_views), views)
    np.testing.assert_array_equal(np.asarray(out_label), label)


def test_mirroring_matches_numpy_flip_on_views_and_label(batch):
    views, label = batch
    flips = np.array([True, False, True])
    out_views, out_label = apply(params_with(2, flips=flips, matrix=np.diag([-1.0, 1, -1])), views, label, OFF)
    np.testing.assert_array_equal(np.asarray(out_views), views[:, :, ::-1, :, ::-1])
    np.testing.assert_array_equal(np.asarray(out_label), label[:, ::-1, :, ::-1])
    # The same mirror through the interpolating path agrees exactly.
    via_warp = apply(params_with(2, matrix=np.diag([-1.0, 1, -1]), resample_on=True), views, label, OFF)
    np.testing.assert_array_equal(np.asarray(via_warp[0]), np.asarray(out_views))
    np.testing.assert_array_equal(np.asarray(via_warp[1]), np.asarray(out_label))


def test_quarter_turn_about_z_is_rot90_for_views_and_label(batch):
    views, label = batch
    matrix = spatial_matrix(jnp.array([np.pi / 2, 0.0, 0.0]), 1.0, jnp.zeros(3, bool), (3.0, 0.5, 0.5))
    out_views, out_label = apply(params_with(2, matrix=matrix, resample_on=True), views, label, OFF)
    # out[z, y, x] = in[z, Y-1-x, y]
    expected_views = np.swapaxes(views[:, :, :, ::-1, :], 3, 4)
    expected_label = np.swapaxes(label[:, :, ::-1, :], 2, 3)
    np.testing.assert_allclose(np.asarray(out_views), expected_views, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out_label), expected_label)


def test_rotated_and_scaled_label_stays_aligned_with_image():
    centre, radii = (6.5, 10.0, 14.0), (3.5, 6.0, 4.0)
    obj = ellipsoid(SHAPE, centre, radii)
    other = ellipsoid(SHAPE, (5.0, 18.0, 6.0), (2.0, 3.0, 3.0))
    views = np.stack([obj, obj]).astype(np.float32)[None].repeat(2, 0)
    label = np.where(obj, 5, np.where(other, 2, 0)).astype(np.int16)[None].repeat(2, 0)
    angles = jnp.array([0.35, 0.15, -0.2])
    matrix = spatial_matrix(angles, 1.15, jnp.array([False, True, False]), (1.0, 1.0, 1.0))
    out_views, out_label = apply(params_with(2, matrix=matrix, resample_on=True), views, label, OFF)
    image = np.asarray(out_views[0, 1]) > 0.5
    target = np.asarray(out_label[0]) == 5
    dice = 2 * np.sum(image & target) / (image.sum() + target.sum())
    assert dice > 0.9, dice
    assert not np.array_equal(target, obj), "the object should have moved"
    # The object's centroid lands where the inverse map says it should.
    out_centroid = np.argwhere(target).mean(axis=0)
    c = (np.array(SHAPE) - 1) / 2
    mapped = c + np.asarray(matrix) @ (out_centroid - c)
    np.testing.assert_allclose(mapped, np.argwhere(obj).mean(axis=0), atol=0.6)
    assert set(np.unique(np.asarray(out_label))) <= {-1, 0, 2, 5}


def test_label_ids_are_never_interpolated_under_random_augmentation(batch):
    views, label = batch
    for seed in range(2):
        out_views, out_label = augment_batch(jax.random.key(seed), views, label, EVERYTHING)
        assert set(np.unique(np.asarray(out_label))) <= {-1, 0, 1, 2, 7, 300}
        assert np.isfinite(np.asarray(out_views)).all()
        assert out_views.shape == views.shape and out_label.shape == label.shape


def test_intensity_draws_are_independent_per_view():
    base = np.random.default_rng(1).uniform(0.5, 1.0, size=SHAPE).astype(np.float32)
    views = np.stack([base, base])[None].repeat(2, 0)
    label = np.zeros((2, *SHAPE), np.int16)
    factors = np.array([[0.8, 1.2], [1.1, 0.9]], np.float32)
    params = params_with(2, brightness_on=True)
    params = params._replace(intensity=params.intensity._replace(brightness=jnp.asarray(factors)))
    out, _ = apply(params, views, label, OFF)
    np.testing.assert_allclose(np.asarray(out), views * factors[:, :, None, None, None], rtol=1e-6)
    # Random draws: every transform on, the two identical views come out different.
    out, _ = augment_batch(jax.random.key(0), views, label, EVERYTHING)
    out = np.asarray(out)
    assert np.isfinite(out).all()
    assert not np.allclose(out[:, 0], out[:, 1], atol=1e-3)


def test_blur_and_low_resolution_match_their_references():
    from scipy import ndimage as ndi

    from syncas_jax.data.augment import _blur, _low_resolution

    x = np.random.default_rng(2).normal(size=(10, 16, 14)).astype(np.float32)
    blurred = jax.jit(functools.partial(_blur, radius=4))(x, 0.8)
    np.testing.assert_allclose(np.asarray(blurred), ndi.gaussian_filter(x, 0.8, truncate=4.0 / 0.8), atol=2e-5)
    # Zoom 0.5: nearest downsampling keeps every other voxel, linear upsampling between them.
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[None, :, None], (10, 16, 14))
    low = np.asarray(jax.jit(_low_resolution)(ramp, 0.5))
    assert np.all(np.diff(low[0, :, 0]) >= -1e-6) and abs(low.mean() - ramp.mean()) < 0.6
    np.testing.assert_allclose(np.asarray(jax.jit(_low_resolution)(x, 1.0)), x, atol=2e-5)


def test_drawn_probabilities_and_ranges():
    n = 4000
    params = sample(jax.random.key(1), n, 2, AugmentConfig())
    spatial, intensity = params.spatial, params.intensity

    def close(flags, p):
        frac = float(np.mean(np.asarray(flags)))
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / np.size(flags)), (frac, p)

    still = ~np.asarray(spatial.resample_on)
    mirror_only = np.stack([np.diag(np.where(f, -1.0, 1.0)) for f in np.asarray(spatial.flips)[still]])
    np.testing.assert_array_equal(np.asarray(spatial.matrix)[still], mirror_only)
    close(spatial.resample_on, 1 - 0.8 * 0.8)
    close(spatial.flips, 0.5)
    close(intensity.noise_on, 0.1)
    close(intensity.blur_on, 0.1)
    close(intensity.brightness_on, 0.15)
    close(intensity.contrast_on, 0.15)
    close(intensity.lowres_on, 0.125)
    close(intensity.gamma_inverted_on, 0.1)
    close(intensity.gamma_on, 0.3)
    for values, (lo, hi) in [
        (intensity.blur_sigma, (0.5, 1.0)),
        (intensity.brightness, (0.75, 1.25)),
        (intensity.contrast, (0.75, 1.25)),
        (intensity.lowres_zoom, (0.5, 1.0)),
        (intensity.gamma, (0.7, 1.5)),
        (intensity.noise_sigma, (0.0, 0.1)),
    ]:
        values = np.asarray(values)
        assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6


def test_centre_crop_output_shape(batch):
    views, label = batch
    out_shape = (8, 20, 16)
    mirrored = apply(params_with(2), views, label, OFF, out_shape)
    warped = apply(params_with(2, matrix=np.eye(3), resample_on=True), views, label, OFF, out_shape)
    np.testing.assert_array_equal(np.asarray(mirrored[0]), views[:, :, 2:10, 2:22, 4:20])
    np.testing.assert_array_equal(np.asarray(warped[0]), np.asarray(mirrored[0]))
    np.testing.assert_array_equal(np.asarray(warped[1]), np.asarray(mirrored[1]))
    with pytest.raises(ValueError):
        apply_params(params_with(2), views, label, OFF, (7, 20, 16))
