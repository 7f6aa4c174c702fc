"""The train step: non-finite gradients are skipped, constant batches stay finite, the augmentation is the config's."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from syncas_jax.data.augment import AugmentConfig
from syncas_jax.train.config import config_from_dict
from syncas_jax.train.loop import StepCache, restore_or_init
from syncas_jax.train.parallel import make_mesh
from syncas_jax.train.state import create_train_state, make_model
from syncas_jax.train.step import apply_finite_gradients, jit_train_step
from tests.train.cases import TINY


def tiny(tmp_path: Path, **changes):
    raw = {**TINY, "data_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"), **changes}
    return config_from_dict(raw)[0]


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def labelled_batch(shape, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((shape[0], *shape[2:]), np.int16)
    label[:, 6:10, 12:20, 12:20] = 1
    return {"views": rng.normal(size=shape).astype(np.float32), "label": label}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny(tmp_path_factory.mktemp("step"))
    step = jit_train_step(make_model(config), config.loss, config.negatives_at(0))
    return config, step


def test_infinite_gradient_keeps_parameters_and_optimiser_state(setup):
    """Constructed, not provoked: one infinite gradient entry on any machine."""
    config, _ = setup
    state = create_train_state(config, jax.random.key(0))
    grads = jax.tree.map(jnp.ones_like, state.params)
    first = jax.tree_util.tree_leaves(grads)[0]
    grads = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(grads), [first.at[(0,) * first.ndim].set(jnp.inf), *jax.tree.leaves(grads)[1:]]
    )
    metrics = {"loss": jnp.float32(1.0)}
    after, out = apply_finite_gradients(state, grads, state.batch_stats, metrics)
    assert float(out["skipped"]) == 1.0 and float(out["grad_norm"]) == 0.0
    assert int(after.step) == int(state.step) + 1
    for old, new in zip(leaves((state.params, state.opt_state)), leaves((after.params, after.opt_state))):
        np.testing.assert_array_equal(new, old)
    finite = jax.tree.map(jnp.ones_like, state.params)
    updated, out = apply_finite_gradients(state, finite, state.batch_stats, metrics)
    assert float(out["skipped"]) == 0.0
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(state.params), leaves(updated.params)))


def test_nan_batch_is_skipped_by_the_jitted_step(setup):
    """A NaN voxel makes every gradient NaN (IEEE propagation, the same on every CPU): the step is skipped."""
    config, step = setup
    state = create_train_state(config, jax.random.key(0))
    before = leaves(state.params)  # the step donates its input state
    batch = labelled_batch((2, 2, *config.data.patch_size))
    batch["views"][0, 0, 3, 5, 7] = np.nan
    after, metrics = step(state, batch, jax.random.key(1))
    assert float(metrics["skipped"]) == 1.0 and int(after.step) == 1
    for old, new in zip(before, leaves(after.params)):
        np.testing.assert_array_equal(new, old)
    assert all(np.isfinite(x).all() for x in leaves(after.opt_state))


def test_constant_batch_leaves_finite_weights(setup):
    """Two patches entirely in air: batch-norm variances ~0. Skipped or applied, the weights stay finite."""
    config, step = setup
    shape = (2, 2, *config.data.patch_size)
    constant = {"views": np.full(shape, -1.0, np.float32), "label": np.zeros((2, *config.data.patch_size), np.int16)}
    after, metrics = step(create_train_state(config, jax.random.key(0)), constant, jax.random.key(1))
    assert float(metrics["skipped"]) in (0.0, 1.0)
    assert all(np.isfinite(x).all() for x in leaves((after.params, after.opt_state, after.batch_stats)))


def test_ordinary_batch_updates_the_weights(setup):
    config, step = setup
    state = create_train_state(config, jax.random.key(0))
    before = leaves(state.params)
    after, metrics = step(state, labelled_batch((2, 2, *config.data.patch_size)), jax.random.key(1))
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, leaves(after.params)))


def test_training_augments_in_the_configured_spacing(tmp_path):
    """The run's augmentation rotates and scales in config.spacing, not in the module default."""
    config = tiny(tmp_path, augmentated=True, spacing=[2.0, 0.5, 0.5])
    steps = StepCache(restore_or_init(config, make_mesh(), resume=False, log=lambda _: None))
    assert steps.augment is not None
    assert steps.augment.keywords["config"] == AugmentConfig(spacing=(2.0, 0.5, 0.5))


def test_unet_clip_scope_leaves_the_projection_heads_unclipped():
    """grad_clip_scope "unet": the norm is taken over the U-Net alone and only its gradients are scaled."""
    from syncas_jax.train.state import make_optimizer

    grads = {"unet": {"w": jnp.full((4,), 30.0)}, "head0": {"w": jnp.full((4,), 100.0)}}  # |unet| = 60
    params = jax.tree.map(jnp.zeros_like, grads)

    def first_update(scope):
        train = tiny(Path("/nonexistent"), grad_clip_scope=scope, weight_decay=0.0).train
        optimizer = make_optimizer(train)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return jax.tree.map(np.asarray, updates)

    unet_only, everything = first_update("unet"), first_update("all")
    lr = 0.01  # TINY's initial_lr; SGD's first Nesterov step is -lr (1 + momentum) g
    factor = -lr * (1 + 0.99)
    np.testing.assert_allclose(unet_only["unet"]["w"], factor * 30.0 * 12.0 / 60.0, rtol=1e-5)
    np.testing.assert_allclose(unet_only["head0"]["w"], factor * 100.0, rtol=1e-5)
    total = np.sqrt(4 * 30.0**2 + 4 * 100.0**2)
    np.testing.assert_allclose(everything["head0"]["w"], factor * 100.0 * 12.0 / total, rtol=1e-5)


def write_corner_vessel_cache(cache: Path, ids: list[str]) -> None:
    """A small vessel in one corner of a large volume: a random 16x32x32 patch rarely meets it."""
    from syncas_jax.data.cache import PreprocessedCase, branch_labels, foreground_locations, write_cached_case

    shape = (20, 128, 128)
    mask = np.zeros(shape, bool)
    mask[2:18, 6:9, 6:9] = True
    label = branch_labels(mask)
    views = np.zeros((2, *shape), np.float32)
    for case_id in ids:
        write_cached_case(cache, case_id, PreprocessedCase(views, label, foreground_locations(label), {"num_views": 2}))


def batches_on_foreground(config, ids: list[str], batches: int, step: int = 0) -> np.ndarray:
    """(batches, B) bool: which training patches from global batch `step` on hold a coronary voxel."""
    from syncas_jax.train.loop import make_loaders

    loaders = make_loaders(config, ids, ids, step)
    return np.stack([(next(loaders.train)["label"] > 0).any(axis=(1, 2, 3)) for _ in range(batches)])


def test_force_foreground_puts_every_training_patch_on_a_coronary(tmp_path):
    ids = ["corner0", "corner1"]
    write_corner_vessel_cache(tmp_path / "cache", ids)

    def fraction_on_foreground(force: bool) -> float:
        config = tiny(tmp_path, force_foreground=force, oversample_foreground_percent=0.0)
        return float(batches_on_foreground(config, ids, 8).mean())

    assert fraction_on_foreground(True) == 1.0
    assert fraction_on_foreground(False) < 0.5


def test_force_foreground_epochs_forces_the_first_epochs_only_and_resumes_so(tmp_path):
    """With oversample 0, exactly the warm-up's batches are on the vessel; a resume mid-way keeps the rule."""
    ids = ["corner0", "corner1"]
    write_corner_vessel_cache(tmp_path / "cache", ids)
    config = tiny(tmp_path, force_foreground_epochs=2, num_iterations_per_epoch=3, oversample_foreground_percent=0.0)
    hits = batches_on_foreground(config, ids, 12)
    assert hits[:6].all()
    assert hits[6:].mean() < 0.5
    np.testing.assert_array_equal(batches_on_foreground(config, ids, 4, step=4), hits[4:8])
    assert config_from_dict(config.to_flat())[0].data.force_foreground_epochs == 2
