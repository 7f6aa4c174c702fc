"""Dice+CE and contrastive losses against the straightforward PyTorch loop and analytic values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from syncas_jax.losses.contrastive import (
    NEGATIVE,
    POSITIVE,
    PSEUDO,
    bit_of_rank,
    contrastive_loss,
    draw_voxels,
    floyd_ranks,
    multi_tap_contrastive_loss,
    resize_labels_nearest,
    set_of_label,
    voxel_sets,
)
from syncas_jax.losses.dice_ce import dice_ce_loss
from tests import torch_reference as ref

jax.config.update("jax_enable_x64", False)


def to_torch_channels_first(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a), -1, 1)))


# ---------------------------------------------------------------- Dice + CE


def test_dice_ce_matches_torch_value_and_gradient():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 6, 5, 2)).astype(np.float32) * 2
    target = (rng.random((3, 4, 6, 5)) < 0.3).astype(np.int32)
    target[1] = 0  # a sample with an empty foreground: Dice term must stay defined

    value, grad = jax.value_and_grad(dice_ce_loss)(jnp.asarray(logits), jnp.asarray(target))
    logits_t = to_torch_channels_first(logits).requires_grad_(True)
    value_t = ref.dice_ce_loss_torch(logits_t, torch.from_numpy(target).long())
    value_t.backward()
    np.testing.assert_allclose(float(value), value_t.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.moveaxis(np.asarray(grad), -1, 1), logits_t.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_foreground_weighted_cross_entropy_is_torchs_weighted_mean():
    """ce_foreground_weight w: the CE part is PyTorch's cross_entropy(weight=[1, w]); w = 1 is the plain loss."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 5, 6, 2)).astype(np.float32)
    target = (rng.random((2, 4, 5, 6)) < 0.2).astype(np.int32)
    logits_t = to_torch_channels_first(logits)
    target_t = torch.from_numpy(target).long()
    dice_term = ref.dice_ce_loss_torch(logits_t, target_t) - torch.nn.functional.cross_entropy(logits_t, target_t)
    for w in (1.0, 7.5):
        ce = torch.nn.functional.cross_entropy(logits_t, target_t, weight=torch.tensor([1.0, w]))
        ours = float(dice_ce_loss(jnp.asarray(logits), jnp.asarray(target), foreground_weight=w))
        np.testing.assert_allclose(ours, float(dice_term + ce), rtol=1e-5, atol=1e-6)
    assert float(dice_ce_loss(jnp.asarray(logits), jnp.asarray(target))) == pytest.approx(
        float(dice_ce_loss(jnp.asarray(logits), jnp.asarray(target), foreground_weight=1.0))
    )


def test_dice_ce_perfect_prediction_is_minus_one():
    target = np.zeros((2, 4, 4, 4), np.int32)
    target[:, 1:3, 1:3, 1:3] = 1
    logits = np.stack([(1 - target) * 40.0, target * 40.0], axis=-1).astype(np.float32)
    assert float(dice_ce_loss(jnp.asarray(logits), jnp.asarray(target))) == pytest.approx(-1.0, abs=1e-5)


# ---------------------------------------------------------------- sampling primitives


def binomial_bounds(trials: int, p: float, sigmas: float = 6.0) -> tuple[float, float]:
    """Mean ± `sigmas` binomial standard deviations of a count over `trials` draws of probability p.

    Six sigmas: a correct sampler falls outside with probability ~2e-9 per count (and the
    seeds are fixed); a sampler that favours some members by 10 % does not fit inside."""
    mean = trials * p
    spread = sigmas * np.sqrt(trials * p * (1 - p))
    return mean - spread, mean + spread


def assert_binomial(counts: np.ndarray, trials: int, p: float) -> None:
    """Every count lies within `binomial_bounds(trials, p)`."""
    low, high = binomial_bounds(trials, p)
    assert counts.min() > low and counts.max() < high, (counts.min(), counts.max(), low, high)


@pytest.mark.parametrize("size", [5, 32, 33, 1000, 70_001, 1_100_000])
def test_count_tree_maps_the_ranks_of_each_set_onto_its_members(size):
    """Ranks 0 … |set| − 1 of every set map one-to-one onto the set's voxels (np.flatnonzero), in any
    query order with sets mixed; 70 001 and 1.1 M voxels make trees of 3 and 4 levels."""
    set_id = np.random.default_rng(size).integers(-1, 3, size).astype(np.int8)
    set_id[: size // 3] = -1  # a long run of voxels in no set
    sets = voxel_sets(jnp.asarray(set_id), 3)
    levels, nodes = 1, -(-size // 32)  # 32-voxel blocks, then 32 children per node up to one root
    while nodes > 32:
        levels, nodes = levels + 1, -(-nodes // 32)
    assert len(sets.prefixes) == levels
    members = [np.flatnonzero(set_id == s) for s in range(3)]
    np.testing.assert_array_equal(np.asarray(sets.sizes()), [len(m) for m in members])
    which = np.concatenate([np.full(len(m), s) for s, m in enumerate(members)]).astype(np.int32)
    rank = np.concatenate([np.arange(len(m)) for m in members]).astype(np.int32)
    order = np.random.default_rng(1).permutation(len(rank))
    voxel = np.asarray(
        jax.jit(lambda t, w, r: t.voxel_of_rank(w, r))(sets, jnp.asarray(which[order]), jnp.asarray(rank[order]))
    )
    for s, m in enumerate(members):
        np.testing.assert_array_equal(np.sort(voxel[which[order] == s]), m)


def test_bit_of_rank_finds_each_set_bit():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32)
    masks[:3] = [0xFFFFFFFF, 1, 2**31]
    bits = [np.flatnonzero([(int(m) >> j) & 1 for j in range(32)]) for m in masks]
    mask = np.concatenate([np.full(len(b), m) for m, b in zip(masks, bits)]).astype(np.uint32)
    rank = np.concatenate([np.arange(len(b)) for b in bits]).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(bit_of_rank(jnp.asarray(mask), jnp.asarray(rank))), np.concatenate(bits))


def floyd_loop(draws: list[int], size: int) -> list[int]:
    """Floyd's algorithm as written: step i takes draws[i], or size − k + i if already taken."""
    taken: list[int] = []
    for i, t in enumerate(draws):
        taken.append(size - len(draws) + i if t in taken else t)
    return taken


@pytest.mark.parametrize("size,k", [(1, 1), (5, 5), (6, 5), (64, 64), (65, 64), (80, 64), (5000, 512)])
def test_floyd_ranks_equal_floyds_loop(size, k):
    rng = np.random.default_rng(size + k)
    for _ in range(20):
        draws = np.array([rng.integers(0, size - k + i + 1) for i in range(k)], np.int32)
        ranks = np.asarray(floyd_ranks(jnp.asarray(draws), jnp.int32(size)))
        assert ranks.tolist() == floyd_loop(draws.tolist(), size)
        assert len(set(ranks.tolist())) == k and ranks.min() >= 0 and ranks.max() < size


def test_floyd_subsets_are_uniform():
    """With uniform draws, each of the 10 two-element subsets of [0, 5) comes up equally often."""
    trials = 20_000
    rng = np.random.default_rng(3)
    draws = np.stack([rng.integers(0, 4, trials), rng.integers(0, 5, trials)], axis=1).astype(np.int32)
    pairs = np.sort(np.asarray(jax.vmap(lambda d: floyd_ranks(d, jnp.int32(5)))(jnp.asarray(draws))), axis=1)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    counts = np.bincount(pairs[:, 0] * 5 + pairs[:, 1], minlength=25).reshape(5, 5)
    assert_binomial(counts[np.triu_indices(5, 1)], trials, 1 / 10)


def item_labels(positives: int) -> np.ndarray:
    """(4096,) labels, shuffled: `positives` of branch 1, 2000 background, 150 each of branches 2 and 3."""
    labels = np.full(4096, -1, np.int32)
    labels[:positives] = 1
    labels[positives : positives + 2000] = 0
    labels[positives + 2000 : positives + 2150] = 2
    labels[positives + 2150 : positives + 2300] = 3
    return np.random.default_rng(positives).permutation(labels)


@pytest.mark.parametrize("positives", [600, 100])
def test_draw_voxels_is_uniform_over_each_set(positives):
    """Anchors distinct (|P| = 600 >= 512) or with replacement (|P| = 100); negatives and
    pseudo-negatives uniform over their sets; no draw leaves its set. Counts over many
    independent draws lie within 6 binomial standard deviations of their expectation."""
    labels = item_labels(positives)
    sets = voxel_sets(set_of_label(jnp.asarray(labels), True), 3)
    trials, num_anchor, neg, pseudo = 300, 512, 5, 1
    keys = jax.random.split(jax.random.key(positives), trials)
    voxels = np.asarray(jax.jit(jax.vmap(lambda k: draw_voxels(k, sets, num_anchor, neg, pseudo)))(keys))
    anchor = voxels[:, :num_anchor]
    negative = voxels[:, num_anchor : num_anchor * (1 + neg)]
    pseudo_neg = voxels[:, num_anchor * (1 + neg) :]
    assert pseudo_neg.shape == (trials, num_anchor * pseudo)
    assert np.all(labels[anchor] == 1) and np.all(labels[negative] == 0) and np.all(labels[pseudo_neg] > 1)

    def member_counts(drawn: np.ndarray, members: np.ndarray) -> np.ndarray:
        return np.bincount(drawn.ravel(), minlength=labels.size)[np.flatnonzero(members)]

    if positives >= num_anchor:  # distinct: each trial holds a positive or not, probability 512 / |P|
        assert all(len(np.unique(row)) == num_anchor for row in anchor)
        assert_binomial(member_counts(anchor, labels == 1), trials, num_anchor / positives)
    else:
        assert_binomial(member_counts(anchor, labels == 1), anchor.size, 1 / positives)
    assert_binomial(member_counts(negative, labels == 0), negative.size, 1 / 2000)
    assert_binomial(member_counts(pseudo_neg, labels > 1), pseudo_neg.size, 1 / 300)


def test_set_of_label_sorts_voxels_into_the_spec_sets():
    labels = jnp.asarray([-1, 0, 1, 2, 5])
    np.testing.assert_array_equal(set_of_label(labels, True), [-1, NEGATIVE, POSITIVE, PSEUDO, PSEUDO])
    np.testing.assert_array_equal(set_of_label(labels, False), [-1, NEGATIVE, POSITIVE, POSITIVE, POSITIVE])


def test_resize_labels_nearest_matches_torch():
    labels = np.random.default_rng(0).integers(-1, 4, size=(2, 8, 12, 10))
    for size in [(4, 6, 5), (2, 3, 5), (8, 12, 10)]:
        ours = np.asarray(resize_labels_nearest(jnp.asarray(labels), size))
        theirs = ref.resize_labels_nearest(torch.from_numpy(labels), size).numpy()
        np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------- contrastive loss

SET_OF_LABEL = {-1: 0, 0: 1, 1: 2}  # ignore, negative, positive; every label > 1 is "pseudo" (3)


def class_constant_case(seed: int, batch: int = 4, shape=(8, 16, 16), channels: int = 16):
    """Labels with several branches and per-set constant, unit-norm features of two views."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((batch, *shape), np.int32)
    labels[:, :, :2, :] = -1  # padding, ignored
    labels[0, 2:6, 4:12, 4:10] = 1  # big branch
    labels[0, 2:6, 13:15, 2:4] = 2
    labels[0, 6:8, 2:4, 12:15] = 3
    labels[1, 1:7, 5:9, 5:9] = 1  # no pseudo-negatives in item 1
    labels[2, 0:2, 6:8, 6:8] = 1  # item 2: a small branch only (skipped at low resolution)
    labels[2, 4:8, 8:16, 8:16] = 2
    labels[3, :, 2:, :] = 1  # item 3: almost no background → skipped (< 10 negatives)
    labels[3, 0, 2, :4] = 0
    table1 = rng.normal(size=(4, channels))
    table2 = table1 + 0.7 * rng.normal(size=(4, channels))
    table1 /= np.linalg.norm(table1, axis=1, keepdims=True)
    table2 /= np.linalg.norm(table2, axis=1, keepdims=True)
    return labels, table1.astype(np.float32), table2.astype(np.float32)


def set_index(labels: np.ndarray, branch_aware: bool) -> np.ndarray:
    index = np.where(labels > 1, 3 if branch_aware else 2, 0)
    for label, k in SET_OF_LABEL.items():
        index = np.where(labels == label, k, index)
    return index


def features_at(labels: np.ndarray, table: np.ndarray, factor: int, branch_aware: bool) -> np.ndarray:
    small = labels[:, ::factor, ::factor, ::factor]
    return table[set_index(small, branch_aware)]


@pytest.mark.parametrize("branch_aware", [True, False])
@pytest.mark.parametrize("factor", [1, 2])
@pytest.mark.parametrize("negatives", [(5, 1), (10, 2)])
def test_contrastive_matches_torch_loop(branch_aware, factor, negatives):
    labels, table1, table2 = class_constant_case(seed=factor)
    f1 = features_at(labels, table1, factor, branch_aware)
    f2 = features_at(labels, table2, factor, branch_aware)
    kwargs = dict(neg_per_anchor=negatives[0], pseudo_neg_per_anchor=negatives[1], alpha=0.9, branch_aware=branch_aware)
    ours = contrastive_loss(jax.random.key(3), jnp.asarray(f1), jnp.asarray(f2), jnp.asarray(labels), **kwargs)
    theirs = ref.contrastive_loss_loop(
        to_torch_channels_first(f1),
        to_torch_channels_first(f2),
        torch.from_numpy(labels),
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    assert float(theirs) > 0.1
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5, atol=1e-6)


def analytic_item_loss(table1, table2, *, alpha, temperature=0.3, negatives=5, pseudo=1, has_pseudo=True):
    a = table1[2]
    logits = [a @ table2[2] / temperature] + [a @ table2[1] / temperature] * negatives
    if has_pseudo:
        logits += [alpha * (a @ table2[3]) / temperature] * pseudo
    logits = np.asarray(logits, np.float64)
    return np.log(np.sum(np.exp(logits))) - logits[0]


def test_alpha_scales_only_pseudo_negative_logits():
    labels, table1, table2 = class_constant_case(seed=5)
    labels = labels[:2]  # item 0 has pseudo-negatives, item 1 has none
    f1 = jnp.asarray(features_at(labels, table1, 1, True))
    f2 = jnp.asarray(features_at(labels, table2, 1, True))
    for alpha in (0.0, 0.5, 1.0, 2.0):
        ours = float(contrastive_loss(jax.random.key(0), f1, f2, jnp.asarray(labels), alpha=alpha))
        expected = 0.5 * (
            analytic_item_loss(table1, table2, alpha=alpha)
            + analytic_item_loss(table1, table2, alpha=alpha, has_pseudo=False)
        )
        assert ours == pytest.approx(expected, rel=1e-5)
    without_pseudo = [
        float(contrastive_loss(jax.random.key(0), f1[1:], f2[1:], jnp.asarray(labels[1:]), alpha=alpha))
        for alpha in (0.1, 3.0)
    ]
    assert without_pseudo[0] == pytest.approx(without_pseudo[1], rel=1e-6)


def test_all_items_skipped_gives_zero_and_finite_gradient():
    labels = np.zeros((2, 8, 16, 16), np.int32)
    labels[0, 0, 0, :5] = 1  # 5 positives < 10
    labels[1] = -1  # all ignored
    f = jax.random.normal(jax.random.key(0), (2, 8, 16, 16, 8))

    def loss(f):
        return contrastive_loss(jax.random.key(1), f, f, jnp.asarray(labels))

    value, grad = jax.value_and_grad(loss)(f)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0)


def test_ignored_voxels_never_enter_the_loss():
    labels, table1, table2 = class_constant_case(seed=7)
    f1 = features_at(labels, table1, 1, True)
    f2 = features_at(labels, table2, 1, True)
    garbage = np.random.default_rng(0).normal(size=f1.shape).astype(np.float32) * 100
    ignored = (labels == -1)[..., None]
    base = contrastive_loss(jax.random.key(0), jnp.asarray(f1), jnp.asarray(f2), jnp.asarray(labels))
    noisy = contrastive_loss(
        jax.random.key(0),
        jnp.asarray(np.where(ignored, garbage, f1)),
        jnp.asarray(np.where(ignored, garbage, f2)),
        jnp.asarray(labels),
    )
    assert float(base) == pytest.approx(float(noisy), rel=1e-6)


def test_gradient_matches_torch_loop():
    """With per-set features f = table[set], d loss / d table does not depend on the draws."""
    labels, table1, table2 = class_constant_case(seed=11)
    index = set_index(labels, True)

    def ours(t1, t2):
        return contrastive_loss(jax.random.key(0), t1[index], t2[index], jnp.asarray(labels), alpha=0.7)

    grads = jax.grad(ours, argnums=(0, 1))(jnp.asarray(table1), jnp.asarray(table2))
    t1 = torch.from_numpy(table1).requires_grad_(True)
    t2 = torch.from_numpy(table2).requires_grad_(True)
    idx = torch.from_numpy(index).long()
    loss_t = ref.contrastive_loss_loop(
        t1[idx].movedim(-1, 1),
        t2[idx].movedim(-1, 1),
        torch.from_numpy(labels),
        alpha=0.7,
        generator=torch.Generator().manual_seed(1),
    )
    loss_t.backward()
    np.testing.assert_allclose(np.asarray(grads[0]), t1.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), t2.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_projecting_after_sampling_equals_projecting_everything():
    labels, _, _ = class_constant_case(seed=2)
    rng = np.random.default_rng(0)
    raw1 = jnp.asarray(rng.normal(size=(*labels.shape, 8)).astype(np.float32))
    raw2 = jnp.asarray(rng.normal(size=(*labels.shape, 8)).astype(np.float32))
    weight = jnp.asarray(rng.normal(size=(8, 12)).astype(np.float32))

    def head(x):
        y = jnp.tanh(x @ weight)
        return y / jnp.linalg.norm(y, axis=-1, keepdims=True)

    key = jax.random.key(4)
    late = contrastive_loss(key, raw1, raw2, jnp.asarray(labels), project=head)
    early = contrastive_loss(key, head(raw1), head(raw2), jnp.asarray(labels))
    assert float(late) == pytest.approx(float(early), rel=1e-5)


def test_four_taps_sum_and_jit():
    labels, table1, table2 = class_constant_case(seed=3, shape=(16, 16, 16))
    taps1 = [jnp.asarray(features_at(labels, table1, f, True)) for f in (8, 4, 2, 1)]
    taps2 = [jnp.asarray(features_at(labels, table2, f, True)) for f in (8, 4, 2, 1)]
    total = jax.jit(lambda k, a, b, lab: multi_tap_contrastive_loss(k, a, b, lab, alpha=0.5))(
        jax.random.key(0), taps1, taps2, jnp.asarray(labels)
    )
    theirs = ref.contrastive_four_taps_loop(
        [to_torch_channels_first(t) for t in taps1],
        [to_torch_channels_first(t) for t in taps2],
        torch.from_numpy(labels),
        alpha=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(float(total), float(theirs), rtol=1e-5)
