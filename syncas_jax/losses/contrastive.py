"""Branch-aware (and plain) voxel contrastive loss between two views (design §4).

Static shapes throughout: the variable-size voxel sets P (positives), N (negatives)
and Q (pseudo-negatives) are one set id per voxel (int8, computed once at input resolution
and subsampled per tap), indexed once into a count tree (`VoxelSets`: one pass over the
tap's voxels, as 32-voxel bit masks). A draw picks ranks — uniform with replacement, or
distinct by Floyd's algorithm — and maps each rank to its voxel by walking down the tree,
so drawing costs O(draws · log M) and nothing sorts or scans all voxels per draw. The
random ranks of every tap and item come from one `randint` call (on CPU each call is a
rolled loop with a fixed cost). Items are vmapped; nothing loops over items or voxels in Python.

Because the projection head is per voxel, `project` may be given to apply it after the
sampled voxels are gathered: head(features)[idx] == head(features[idx]). That turns the
head's cost from every voxel of the tap into 512·(1 + 1 + negatives) vectors per item.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

MIN_SET_SIZE = 10
MASKED_LOGIT = -1e9
LOSS_DEFAULT_TEMPERATURE = 0.3  # what the reference's loss applies whatever its config says
LOSS_DEFAULT_ALPHA = 0.5
NEGATIVE, POSITIVE, PSEUDO = 0, 1, 2  # voxel set ids (−1: ignored / in no set)
BLOCK = 32  # voxels per bit mask (uint32) and children per node of the count tree


@dataclass(frozen=True)
class ContrastiveConfig:
    """The contrastive term of the training loss (design §4), reference defaults.

    num_anchor: anchors per item (from the positives); neg_per_anchor, pseudo_neg_per_anchor:
    samples per anchor in the first half of training (doubled from half the epochs on);
    temperature: logits = dot / temperature; alpha: weight on pseudo-negative logits;
    branch_aware: positives = largest branch, pseudo-negatives = other branches (False: all
    coronary voxels are positives, no pseudo-negatives); weight: factor on the sum over taps.
    use_config_alpha_temperature: False reproduces the reference's training script, which never
    passes its config's alpha and temperature to the loss, so the loss defaults (α 0.5, τ 0.3) apply.
    """

    num_anchor: int = 512
    neg_per_anchor: int = 5
    pseudo_neg_per_anchor: int = 1
    temperature: float = LOSS_DEFAULT_TEMPERATURE
    alpha: float = LOSS_DEFAULT_ALPHA
    branch_aware: bool = True
    weight: float = 0.1
    use_config_alpha_temperature: bool = True

    def __post_init__(self) -> None:
        if self.num_anchor < 1:
            raise ValueError(f"num_anchor must be >= 1, got {self.num_anchor}")
        for name in ("neg_per_anchor", "pseudo_neg_per_anchor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def negatives_at(self, epoch: int, num_epochs: int) -> tuple[int, int]:
        """(negatives, pseudo-negatives) per anchor at `epoch` (0-based): doubled from num_epochs // 2 on."""
        factor = 2 if epoch >= num_epochs // 2 else 1
        return self.neg_per_anchor * factor, self.pseudo_neg_per_anchor * factor

    def loss_kwargs(self, negatives: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of `contrastive_loss` for one (negatives, pseudo-negatives) setting."""
        return {
            "num_anchor": self.num_anchor,
            "neg_per_anchor": negatives[0],
            "pseudo_neg_per_anchor": negatives[1],
            "temperature": self.temperature if self.use_config_alpha_temperature else LOSS_DEFAULT_TEMPERATURE,
            "alpha": self.alpha if self.use_config_alpha_temperature else LOSS_DEFAULT_ALPHA,
            "branch_aware": self.branch_aware,
        }


def set_of_label(labels: jnp.ndarray, branch_aware: bool) -> jnp.ndarray:
    """Set id of each voxel from its branch label: 0 → NEGATIVE; 1 (any > 0 if not branch_aware) →
    POSITIVE; > 1 → PSEUDO when branch_aware; −1 → −1 (in no set)."""
    positive = labels == 1 if branch_aware else labels > 0
    set_id = jnp.where(labels == 0, NEGATIVE, jnp.where(positive, POSITIVE, jnp.where(labels > 1, PSEUDO, -1)))
    return set_id.astype(jnp.int8)


def resize_labels_nearest(labels: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
    """PyTorch `interpolate(mode='nearest')` of (B, Z, Y, X) labels to (B, *size): src = floor(dst · in / out)."""
    out = labels
    for axis, (n_in, n_out) in enumerate(zip(labels.shape[1:], size), start=1):
        if n_in % n_out == 0:  # floor(dst · k) = dst · k: a strided slice, far cheaper than a gather
            out = jax.lax.slice_in_dim(out, 0, n_in, n_in // n_out, axis=axis)
        else:
            index = jnp.floor(jnp.arange(n_out) * (n_in / n_out)).astype(jnp.int32)
            out = jnp.take(out, index, axis=axis)
    return out


class VoxelSets(NamedTuple):
    """The voxels of an item sorted into S sets, indexed for rank queries (a count tree).

    masks: (S, blocks) uint32 — bit j of masks[s, b] is set iff voxel j · blocks + b is in set s
    (block b holds the voxels b, b + blocks, …: building the masks then reduces over the
    leading axis, which vectorises; ranks follow the tree's order, not the voxels').
    prefixes[i]: (S, parents, BLOCK) running count of set members over the BLOCK children of
    each parent; the children of prefixes[0] are the mask blocks, each level's parents are the
    next level's children, and prefixes[-1] has one parent, the root. A rank query walks from
    the root down, one BLOCK-wide row per level, then picks the bit within the block's mask.
    """

    masks: jnp.ndarray
    prefixes: tuple[jnp.ndarray, ...]

    def sizes(self) -> jnp.ndarray:
        """(S,) members of each set."""
        return self.prefixes[-1][:, 0, -1]

    def voxel_of_rank(self, which: jnp.ndarray, rank: jnp.ndarray) -> jnp.ndarray:
        """Flat voxel index of the member of rank `rank` (0-based, in the tree's order) of set `which`.

        which, rank: (n,) ints. Ranks 0 … size − 1 of a set map one-to-one onto its members; a
        rank outside [0, size) gives an arbitrary index in [0, BLOCK · blocks)."""
        block = jnp.zeros_like(rank)
        for depth in reversed(range(len(self.prefixes))):
            running = self.prefixes[depth][which, block]  # (n, BLOCK), non-decreasing
            passed = running <= rank[:, None]
            child = jnp.minimum(jnp.sum(passed, axis=1), BLOCK - 1)
            rank = rank - jnp.max(jnp.where(passed, running, 0), axis=1)
            children = self.prefixes[depth - 1].shape[1] * BLOCK if depth else self.masks.shape[1]
            block = jnp.minimum(block * BLOCK + child, children - 1)
        return bit_of_rank(self.masks[which, block], rank) * self.masks.shape[1] + block


def bit_of_rank(mask: jnp.ndarray, rank: jnp.ndarray) -> jnp.ndarray:
    """Position (0–31) of the set bit of rank `rank` (0-based, from bit 0) in each uint32 `mask` (n,).

    A binary search for the largest position with at most `rank` set bits below it (31 when
    the mask has no more than `rank` set bits)."""
    position = jnp.zeros(mask.shape, jnp.uint32)
    for step in (16, 8, 4, 2, 1):
        candidate = position + step
        below = mask & ((jnp.uint32(1) << candidate) - 1)
        position = jnp.where(jax.lax.population_count(below) <= rank.astype(jnp.uint32), candidate, position)
    return position.astype(rank.dtype)


def _running_sum(counts: jnp.ndarray, bound: int) -> jnp.ndarray:
    """Inclusive running sum along the last axis of (..., BLOCK) non-negative ints summing to at most `bound`.

    A float32 product with a triangular matrix (exact below 2**24, and several times faster
    than XLA:CPU's cumsum at this width); an integer cumsum past that."""
    if bound >= 2**24:
        return jnp.cumsum(counts, axis=-1)
    upper = jnp.triu(jnp.ones((BLOCK, BLOCK), jnp.float32))
    product = jnp.matmul(counts.astype(jnp.float32), upper, precision=jax.lax.Precision.HIGHEST)
    return product.astype(counts.dtype)


def _in_blocks(values: jnp.ndarray, fill: int) -> jnp.ndarray:
    """(..., n) → (..., ceil(n / BLOCK), BLOCK), padded at the end with `fill`."""
    pad = -values.shape[-1] % BLOCK
    if pad:
        values = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, pad)], constant_values=fill)
    return values.reshape(*values.shape[:-1], -1, BLOCK)


@functools.partial(jax.jit, static_argnums=1)
def voxel_sets(set_id: jnp.ndarray, num_sets: int) -> VoxelSets:
    """Count tree of `set_id` (M,) ints in [−1, num_sets): −1 is in no set (int8 reads fastest)."""
    planes = _in_blocks(set_id, -1).reshape(BLOCK, -1)  # (BLOCK, blocks): planes[j, b] is voxel j · blocks + b
    bits = (jnp.uint32(1) << jnp.arange(BLOCK, dtype=jnp.uint32))[:, None]
    masks = jnp.stack(
        [jnp.sum(jnp.where(planes == s, bits, jnp.uint32(0)), axis=0, dtype=jnp.uint32) for s in range(num_sets)]
    )
    counts = jax.lax.population_count(masks).astype(jnp.int32)
    prefixes = []
    while not prefixes or prefixes[-1].shape[1] > 1:
        prefixes.append(_running_sum(_in_blocks(counts, 0), planes.size))
        counts = prefixes[-1][..., -1]
    # The barrier keeps XLA from fusing the counting pass into the queries' gathers (which
    # would recount whole blocks of voxels per gathered element).
    return VoxelSets(*jax.lax.optimization_barrier((masks, tuple(prefixes))))


def floyd_ranks(draws: jnp.ndarray, size: jnp.ndarray) -> jnp.ndarray:
    """Floyd's uniform k-subset of [0, size) from its k draws, draws[i] uniform in [0, size − k + i].

    Floyd's loop takes draws[i] unless an earlier step already took it, then size − k + i.
    Draw i collides iff an earlier draw has its value, or (first of its value) step
    j = draws[i] − (size − k) < i took its own top value, i.e. collided itself: a chain of
    earlier steps, followed here for all steps at once by pointer doubling. Returns (k,) int.
    The subset is uniform; its order is not (the loss does not depend on the anchors' order:
    each anchor's negatives are independent draws).
    """
    k = draws.shape[0]
    step = jnp.arange(k)
    repeated = jnp.any((draws[:, None] == draws[None, :]) & (step[None, :] < step[:, None]), axis=1)
    top_step = draws - (size - k)
    follows = ~repeated & (top_step >= 0) & (top_step < step)
    pointer = jnp.where(follows, top_step, step)
    for _ in range(max(k - 1, 1).bit_length()):
        pointer = pointer[pointer]
    return jnp.where(repeated[pointer], size - k + step, draws)


class Sample(NamedTuple):
    """How many voxels one item's contrastive sample draws from each set (static)."""

    num_anchor: int
    neg_per_anchor: int
    pseudo_neg_per_anchor: int

    @property
    def size(self) -> int:
        """Voxels in the sample: anchors, then anchor-major negatives, then pseudo-negatives."""
        return self.num_anchor * (1 + self.neg_per_anchor + self.pseudo_neg_per_anchor)

    def can_be_distinct(self, sets: VoxelSets) -> bool:
        """Static: whether the tap has room for num_anchor distinct positives at all."""
        return sets.masks.shape[-1] * BLOCK >= self.num_anchor

    def rank_bounds(self, sets: VoxelSets) -> jnp.ndarray:
        """(n,) exclusive upper bounds (>= 1) of the uniform ranks one item's draw needs: one per
        sampled voxel, then, when anchors can be distinct, Floyd's bounds size − k + i + 1."""
        sizes = sets.sizes()
        bounds = [
            jnp.full(self.num_anchor, sizes[POSITIVE]),
            jnp.full(self.num_anchor * self.neg_per_anchor, sizes[NEGATIVE]),
            jnp.full(self.num_anchor * self.pseudo_neg_per_anchor, sizes[PSEUDO]),
        ]
        if self.can_be_distinct(sets):
            floyd_top = jnp.maximum(sizes[POSITIVE], self.num_anchor) - self.num_anchor
            bounds.append(floyd_top + jnp.arange(self.num_anchor) + 1)
        return jnp.maximum(jnp.concatenate(bounds), 1)

    def voxels(self, sets: VoxelSets, ranks: jnp.ndarray) -> jnp.ndarray:
        """(size,) voxels of one item's sample from `ranks`, uniform in [0, rank_bounds).

        Anchors are distinct (Floyd) when P holds num_anchor members, else drawn with replacement."""
        k, n_neg = self.num_anchor, self.num_anchor * self.neg_per_anchor
        positives = sets.sizes()[POSITIVE]
        anchor = ranks[:k]
        if self.can_be_distinct(sets):
            distinct = floyd_ranks(ranks[self.size :], jnp.maximum(positives, k))
            anchor = jnp.where(positives >= k, distinct, anchor)
        counts = (k, n_neg, self.size - k - n_neg)
        which = jnp.concatenate([jnp.full(n, s, jnp.int32) for s, n in zip((POSITIVE, NEGATIVE, PSEUDO), counts)])
        return sets.voxel_of_rank(which, jnp.concatenate([anchor, ranks[k : self.size]]))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def draw_voxels(
    key: jax.Array, sets: VoxelSets, num_anchor: int, neg_per_anchor: int, pseudo_neg_per_anchor: int
) -> jnp.ndarray:
    """Voxels of one item's contrastive sample: (num_anchor · (1 + neg_per_anchor + pseudo_neg_per_anchor),).

    First num_anchor anchors from POSITIVE (distinct when the set holds num_anchor, else with
    replacement), then neg_per_anchor negatives per anchor from NEGATIVE and pseudo_neg_per_anchor
    from PSEUDO, with replacement (anchor-major: anchor i's come at i · per_anchor + j)."""
    sample = Sample(num_anchor, neg_per_anchor, pseudo_neg_per_anchor)
    bounds = sample.rank_bounds(sets)
    return sample.voxels(sets, jax.random.randint(key, bounds.shape, 0, bounds))


def item_loss(
    f1: jnp.ndarray,
    f2: jnp.ndarray,
    voxels: jnp.ndarray,
    sizes: jnp.ndarray,
    *,
    project: Callable[[jnp.ndarray], jnp.ndarray] | None,
    sample: Sample,
    temperature: float,
    alpha: float,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Loss of one item from its sample. f1, f2: (M, C) voxel features of view 1 / 2; voxels: (sample.size,)
    from `Sample.voxels`; sizes: (3,) set sizes. Returns (loss, valid)."""
    k, neg, pseudo = sample
    valid = (sizes[POSITIVE] >= MIN_SET_SIZE) & (sizes[NEGATIVE] >= MIN_SET_SIZE)
    voxels = jnp.minimum(voxels, f1.shape[0] - 1)
    # Anchor-major rows (positive, its negatives, its pseudo-negatives): one gather in the
    # layout of the logits, one contraction, no copies of gathered features.
    per_anchor = jnp.concatenate(
        [voxels[:k, None], voxels[k : k * (1 + neg)].reshape(k, neg), voxels[k * (1 + neg) :].reshape(k, pseudo)], 1
    )
    a = f1[voxels[:k]]
    b = f2[per_anchor.reshape(-1)]
    if project is not None:
        a, b = project(a), project(b)
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32).reshape(k, 1 + neg + pseudo, -1)
    scale = jnp.concatenate([jnp.ones(1 + neg), jnp.full(pseudo, alpha)]) / temperature
    logits = jnp.einsum("kc,knc->kn", a, b) * scale
    if pseudo:
        logits = jnp.where((jnp.arange(1 + neg + pseudo) <= neg) | (sizes[PSEUDO] > 0), logits, MASKED_LOGIT)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
    return jnp.where(valid, loss, 0.0), valid


def contrastive_loss(
    key: jax.Array,
    f1: jnp.ndarray,
    f2: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    project: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
    **kwargs,
) -> jnp.ndarray:
    """Contrastive loss of one tap, mean over non-skipped items (0 when all are skipped).

    f1, f2: (B, z, y, x, C) features of view 1 / view 2 at the tap's resolution — already
    L2-normalised, or raw tap features with `project` the (per-voxel) projection head.
    labels: (B, Z, Y, X) integer branch labels at input resolution (−1 ignore, 0 background,
    1 largest branch, >1 other branches), resized here by nearest neighbour.
    kwargs: those of `multi_tap_contrastive_loss` (num_anchor, neg_per_anchor, …).
    """
    return multi_tap_contrastive_loss(key, [f1], [f2], labels, projections=[project], **kwargs)


def multi_tap_contrastive_loss(
    key: jax.Array,
    taps1: Sequence[jnp.ndarray],
    taps2: Sequence[jnp.ndarray],
    labels: jnp.ndarray,
    *,
    projections: Sequence[Callable[[jnp.ndarray], jnp.ndarray] | None] | None = None,
    num_anchor: int = 512,
    neg_per_anchor: int = 5,
    pseudo_neg_per_anchor: int = 1,
    temperature: float = LOSS_DEFAULT_TEMPERATURE,
    alpha: float = LOSS_DEFAULT_ALPHA,
    branch_aware: bool = True,
) -> jnp.ndarray:
    """Sum over the taps of each tap's contrastive loss (`contrastive_loss`), features as there.

    With branch_aware False positives are all label > 0 and there are no pseudo-negatives.
    One `randint` call draws the ranks of every tap and item."""
    projections = projections or [None] * len(taps1)
    sample = Sample(num_anchor, neg_per_anchor, pseudo_neg_per_anchor if branch_aware else 0)
    batch = labels.shape[0]
    # Set ids once at input resolution (int8: the counting pass reads a quarter of the bytes);
    # the barrier keeps XLA from recomputing them from the labels inside every tap's slice.
    set_ids = jax.lax.optimization_barrier(set_of_label(labels, branch_aware))
    sets = [
        jax.vmap(lambda ids: voxel_sets(ids, 3))(resize_labels_nearest(set_ids, f.shape[1:4]).reshape(batch, -1))
        for f in taps1
    ]
    bounds = [jax.vmap(sample.rank_bounds)(s) for s in sets]  # (B, n_tap) each
    ranks = jax.random.randint(key, (batch, sum(b.shape[1] for b in bounds)), 0, jnp.concatenate(bounds, axis=1))
    starts = [0, *itertools.accumulate(b.shape[1] for b in bounds)]
    total = jnp.float32(0.0)
    for f1, f2, tap_sets, project, start, stop in zip(taps1, taps2, sets, projections, starts, starts[1:]):
        channels = f1.shape[-1]
        voxels = jax.vmap(sample.voxels)(tap_sets, ranks[:, start:stop])
        losses, valid = jax.vmap(
            functools.partial(item_loss, project=project, sample=sample, temperature=temperature, alpha=alpha)
        )(f1.reshape(batch, -1, channels), f2.reshape(batch, -1, channels), voxels, jax.vmap(VoxelSets.sizes)(tap_sets))
        total = total + jnp.sum(losses) / jnp.maximum(jnp.sum(valid), 1)
    return total
