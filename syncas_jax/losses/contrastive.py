"""Branch-aware (and plain) voxel contrastive loss between two views (design §4).

Static shapes throughout: the variable-size voxel sets P (positives), N (negatives)
and Q (pseudo-negatives) are one set id per voxel, counted once into a count tree
(`VoxelSets`: one pass over the tap). A draw picks ranks — uniform with replacement, or
distinct by Floyd's algorithm — and maps each rank to its voxel by a binary search down the
tree, so drawing costs O(draws · log M) and nothing sorts or scans all voxels per draw.
Items are vmapped; nothing loops over items or voxels in Python.

Because the projection head is per voxel, `project` may be given to apply it after the
sampled voxels are gathered: head(features)[idx] == head(features[idx]). That turns the
head's cost from every voxel of the tap into 512·(1 + 1 + negatives) vectors per item.
"""

from __future__ import annotations

import functools
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
BLOCK = 32  # children per node of the count tree
TOP_BLOCKS = 2048  # the count tree grows levels until its top has at most this many blocks


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
    return jnp.where(labels == 0, NEGATIVE, jnp.where(positive, POSITIVE, jnp.where(labels > 1, PSEUDO, -1)))


def resize_labels_nearest(labels: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
    """PyTorch `interpolate(mode='nearest')` of (B, Z, Y, X) labels to (B, *size): src = floor(dst · in / out)."""
    out = labels
    for axis, (n_in, n_out) in enumerate(zip(labels.shape[1:], size), start=1):
        if n_in != n_out:
            index = jnp.floor(jnp.arange(n_out) * (n_in / n_out)).astype(jnp.int32)
            out = jnp.take(out, index, axis=axis)
    return out


class VoxelSets(NamedTuple):
    """The voxels of an item sorted into S sets and counted for rank queries (a count tree).

    set_id: (M',) set of each voxel (−1: none), padded with −1 to a multiple of BLOCK;
    levels[i]: (M' / BLOCK**(i + 1), S) members of each set per block of BLOCK**(i + 1) voxels.
    Building it is one pass over the voxels; mapping a rank to its voxel is a binary search
    over the top level's running count, then one BLOCK-wide step per level below.
    """

    set_id: jnp.ndarray
    levels: tuple[jnp.ndarray, ...]

    def sizes(self) -> jnp.ndarray:
        """(S,) members of each set."""
        return jnp.sum(self.levels[-1], axis=0)

    def voxel_of_rank(self, which: jnp.ndarray, rank: jnp.ndarray) -> jnp.ndarray:
        """Flat voxel index of the member of rank `rank` (0-based, in voxel order) of set `which`.

        which, rank: (n,) ints. A rank outside [0, size of its set) gives an arbitrary index in [0, M')."""
        top = self.levels[-1]
        # Running count over (set, block) in set-major order: all sets' searches are one search.
        running = jnp.cumsum(top.T.reshape(-1))
        start = jnp.concatenate([jnp.zeros(1, running.dtype), running[top.shape[0] - 1 :: top.shape[0]]])
        wanted = jnp.clip(start[which] + rank, start[which], jnp.maximum(start[which + 1] - 1, start[which]))
        position = jnp.searchsorted(running, wanted, side="right", method="scan_unrolled")
        block = jnp.clip(position - which * top.shape[0], 0, top.shape[0] - 1)
        rank = wanted - jnp.where(position > 0, running[jnp.maximum(position - 1, 0)], 0)
        for depth, level in reversed(list(enumerate(self.levels[:-1]))):
            children = level[_children(block), which[:, None]]
            block, rank = _step_down(children, block, rank, BLOCK ** (depth + 2))
        members = (self.set_id[_children(block)] == which[:, None]).astype(jnp.int32)
        return _step_down(members, block, rank, BLOCK)[0]


def _children(block: jnp.ndarray) -> jnp.ndarray:
    """(n, BLOCK) indices of the children of each block (n,) one level down."""
    return block[:, None] * BLOCK + jnp.arange(BLOCK)


def _step_down(
    children: jnp.ndarray, block: jnp.ndarray, rank: jnp.ndarray, bound: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The child of `block` (n,) holding the member of rank `rank` (n,) within it.

    children: (n, BLOCK) member counts, summing to at most `bound`. Returns (child index one
    level down, rank within that child)."""
    running = _running_sum(children, bound)
    child = jnp.minimum(jnp.sum(running <= rank[:, None], axis=1), BLOCK - 1)
    before = jnp.take_along_axis(running, jnp.maximum(child - 1, 0)[:, None], axis=1)[:, 0]
    return block * BLOCK + child, rank - jnp.where(child > 0, before, 0)


def _running_sum(counts: jnp.ndarray, bound: int) -> jnp.ndarray:
    """Inclusive running sum along the last axis of (n, BLOCK) non-negative ints summing to at most `bound`.

    A float32 product with a triangular matrix (exact below 2**24, and several times faster
    than XLA:CPU's cumsum at this width); an integer cumsum past that."""
    if bound >= 2**24:
        return jnp.cumsum(counts, axis=-1)
    upper = jnp.triu(jnp.ones((BLOCK, BLOCK), jnp.float32))
    product = jnp.matmul(counts.astype(jnp.float32), upper, precision=jax.lax.Precision.HIGHEST)
    return product.astype(counts.dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def voxel_sets(set_id: jnp.ndarray, num_sets: int, top_blocks: int = TOP_BLOCKS) -> VoxelSets:
    """Count tree of `set_id` (M,) ints in [−1, num_sets): −1 is in no set.

    Levels of block sums are added until the top has at most `top_blocks` blocks."""
    pad = -set_id.shape[0] % BLOCK
    set_id = jnp.pad(set_id, (0, pad), constant_values=-1) if pad else set_id
    counts = jnp.sum(set_id.reshape(-1, BLOCK, 1) == jnp.arange(num_sets), axis=1, dtype=jnp.int32)
    levels = [counts]
    while levels[-1].shape[0] > top_blocks:
        pad = -levels[-1].shape[0] % BLOCK
        counts = jnp.pad(levels[-1], ((0, pad), (0, 0)))
        levels.append(jnp.sum(counts.reshape(-1, BLOCK, num_sets), axis=1))
    # The barrier keeps XLA from fusing the counting pass into the queries' gathers (which
    # recounts whole blocks of voxels per gathered element: ~10x slower at 1.6 M voxels).
    return VoxelSets(*jax.lax.optimization_barrier((set_id, tuple(levels))))


def uniform_ranks(key: jax.Array, size: jnp.ndarray, n: int) -> jnp.ndarray:
    """n independent uniform ranks in [0, size) (all 0 when size is 0)."""
    return jax.random.randint(key, (n,), 0, jnp.maximum(size, 1))


def distinct_ranks(key: jax.Array, size: jnp.ndarray, n: int) -> jnp.ndarray:
    """n distinct ranks in [0, size), a uniformly random ordered sample without replacement (needs size >= n)."""
    key_draw, key_order = jax.random.split(key)
    size = jnp.maximum(size, n)
    draws = jax.random.randint(key_draw, (n,), 0, size - n + jnp.arange(n) + 1)
    return jax.random.permutation(key_order, floyd_ranks(draws, size))


def floyd_ranks(draws: jnp.ndarray, size: jnp.ndarray) -> jnp.ndarray:
    """Floyd's uniform k-subset of [0, size) from its k draws, draws[i] uniform in [0, size − k + i].

    Floyd's loop takes draws[i] unless an earlier step already took it, then size − k + i.
    Draw i collides iff an earlier draw has its value, or (first of its value) step
    j = draws[i] − (size − k) < i took its own top value, i.e. collided itself: a chain of
    earlier steps, followed here for all steps at once by pointer doubling. Returns (k,) int.
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


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def draw_voxels(
    key: jax.Array, sets: VoxelSets, num_anchor: int, neg_per_anchor: int, pseudo_neg_per_anchor: int
) -> jnp.ndarray:
    """Voxels of one item's contrastive sample: (num_anchor · (1 + neg_per_anchor + pseudo_neg_per_anchor),).

    First num_anchor anchors from POSITIVE (distinct when the set holds num_anchor, else with
    replacement), then neg_per_anchor negatives per anchor from NEGATIVE and pseudo_neg_per_anchor
    from PSEUDO, with replacement (anchor-major: anchor i's come at i · per_anchor + j)."""
    sizes = sets.sizes()
    key_anchor, key_anchor_rep, key_neg, key_pseudo = jax.random.split(key, 4)
    anchor = uniform_ranks(key_anchor_rep, sizes[POSITIVE], num_anchor)
    if sets.set_id.shape[0] >= num_anchor:  # static: small taps can never hold num_anchor positives
        distinct = distinct_ranks(key_anchor, sizes[POSITIVE], num_anchor)
        anchor = jnp.where(sizes[POSITIVE] >= num_anchor, distinct, anchor)
    draws = [
        (POSITIVE, anchor),
        (NEGATIVE, uniform_ranks(key_neg, sizes[NEGATIVE], num_anchor * neg_per_anchor)),
        (PSEUDO, uniform_ranks(key_pseudo, sizes[PSEUDO], num_anchor * pseudo_neg_per_anchor)),
    ]
    which = jnp.concatenate([jnp.full(rank.shape, s, jnp.int32) for s, rank in draws])
    return sets.voxel_of_rank(which, jnp.concatenate([rank for _, rank in draws]))


def contrastive_item(
    key: jax.Array,
    f1: jnp.ndarray,
    f2: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    project: Callable[[jnp.ndarray], jnp.ndarray] | None,
    num_anchor: int,
    neg_per_anchor: int,
    pseudo_neg_per_anchor: int,
    temperature: float,
    alpha: float,
    branch_aware: bool,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Loss of one item. f1, f2: (M, C) voxel features of view 1 / 2; labels (M,). Returns (loss, valid)."""
    sets = voxel_sets(set_of_label(labels, branch_aware), 3)
    n_neg, n_pos, n_pseudo = (sets.sizes()[i] for i in (NEGATIVE, POSITIVE, PSEUDO))
    valid = (n_pos >= MIN_SET_SIZE) & (n_neg >= MIN_SET_SIZE)

    voxels = jnp.minimum(draw_voxels(key, sets, num_anchor, neg_per_anchor, pseudo_neg_per_anchor), labels.shape[0] - 1)
    anchor = voxels[:num_anchor]

    a = f1[anchor]
    b = f2[voxels]
    if project is not None:
        a, b = project(a), project(b)
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    pos_feat = b[:num_anchor]
    neg_feat = b[num_anchor : num_anchor * (1 + neg_per_anchor)].reshape(num_anchor, neg_per_anchor, -1)
    columns = [
        jnp.sum(a * pos_feat, axis=-1, keepdims=True) / temperature,
        jnp.einsum("kc,knc->kn", a, neg_feat) / temperature,
    ]
    if pseudo_neg_per_anchor:
        pseudo_feat = b[num_anchor * (1 + neg_per_anchor) :].reshape(num_anchor, pseudo_neg_per_anchor, -1)
        pseudo_logits = alpha * jnp.einsum("kc,knc->kn", a, pseudo_feat) / temperature
        columns.append(jnp.where(n_pseudo > 0, pseudo_logits, MASKED_LOGIT))
    logits = jnp.concatenate(columns, axis=-1)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
    return jnp.where(valid, loss, 0.0), valid


def contrastive_loss(
    key: jax.Array,
    f1: jnp.ndarray,
    f2: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    project: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
    num_anchor: int = 512,
    neg_per_anchor: int = 5,
    pseudo_neg_per_anchor: int = 1,
    temperature: float = LOSS_DEFAULT_TEMPERATURE,
    alpha: float = LOSS_DEFAULT_ALPHA,
    branch_aware: bool = True,
) -> jnp.ndarray:
    """Contrastive loss of one tap, mean over non-skipped items (0 when all are skipped).

    f1, f2: (B, z, y, x, C) features of view 1 / view 2 at the tap's resolution — already
    L2-normalised, or raw tap features with `project` the (per-voxel) projection head.
    labels: (B, Z, Y, X) integer branch labels at input resolution (−1 ignore, 0 background,
    1 largest branch, >1 other branches), resized here by nearest neighbour.
    With branch_aware False positives are all label > 0 and there are no pseudo-negatives.
    """
    batch = f1.shape[0]
    channels = f1.shape[-1]
    labels = resize_labels_nearest(labels, f1.shape[1:4]).reshape(batch, -1)
    item = jax.vmap(
        lambda k, a, b, lab: contrastive_item(
            k,
            a,
            b,
            lab,
            project=project,
            num_anchor=num_anchor,
            neg_per_anchor=neg_per_anchor,
            pseudo_neg_per_anchor=pseudo_neg_per_anchor if branch_aware else 0,
            temperature=temperature,
            alpha=alpha,
            branch_aware=branch_aware,
        )
    )
    losses, valid = item(
        jax.random.split(key, batch), f1.reshape(batch, -1, channels), f2.reshape(batch, -1, channels), labels
    )
    count = jnp.sum(valid)
    return jnp.sum(losses) / jnp.maximum(count, 1)


def multi_tap_contrastive_loss(
    key: jax.Array,
    taps1: Sequence[jnp.ndarray],
    taps2: Sequence[jnp.ndarray],
    labels: jnp.ndarray,
    *,
    projections: Sequence[Callable[[jnp.ndarray], jnp.ndarray] | None] | None = None,
    **kwargs,
) -> jnp.ndarray:
    """Sum of `contrastive_loss` over the taps (one RNG key per tap)."""
    projections = projections or [None] * len(taps1)
    keys = jax.random.split(key, len(taps1))
    return sum(
        contrastive_loss(k, a, b, labels, project=p, **kwargs) for k, a, b, p in zip(keys, taps1, taps2, projections)
    )
