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
