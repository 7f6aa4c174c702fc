"""Branch-aware (and plain) voxel contrastive loss between two views (design §4).

Static shapes throughout: the variable-size voxel sets P (positives), N (negatives)
and Q (pseudo-negatives) are boolean masks, and sampling from them is masked sampling
(uniform top-k without replacement, inverse-CDF search with replacement). Items are
vmapped; nothing loops over items or voxels in Python.

Because the projection head is per voxel, `project` may be given to apply it after the
sampled voxels are gathered: head(features)[idx] == head(features[idx]). That turns the
head's cost from every voxel of the tap into 512·(1 + 1 + negatives) vectors per item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

MIN_SET_SIZE = 10
MASKED_LOGIT = -1e9
LOSS_DEFAULT_TEMPERATURE = 0.3  # what the reference's loss applies whatever its config says
LOSS_DEFAULT_ALPHA = 0.5


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


def resize_labels_nearest(labels: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
    """PyTorch `interpolate(mode='nearest')` of (B, Z, Y, X) labels to (B, *size): src = floor(dst · in / out)."""
    out = labels
    for axis, (n_in, n_out) in enumerate(zip(labels.shape[1:], size), start=1):
        if n_in != n_out:
            index = jnp.floor(jnp.arange(n_out) * (n_in / n_out)).astype(jnp.int32)
            out = jnp.take(out, index, axis=axis)
    return out


def sample_with_replacement(key: jax.Array, mask: jnp.ndarray, n: int) -> jnp.ndarray:
    """n uniform draws (with replacement) of indices where `mask` (M,) is True; arbitrary if none."""
    cdf = jnp.cumsum(mask.astype(jnp.int32))
    rank = jax.random.randint(key, (n,), 0, jnp.maximum(cdf[-1], 1))
    index = jnp.searchsorted(cdf, rank, side="right", method="scan_unrolled")  # binary search: n·log M
    return jnp.minimum(index, mask.shape[0] - 1)


def sample_without_replacement(key: jax.Array, mask: jnp.ndarray, n: int) -> jnp.ndarray:
    """n distinct uniform indices where `mask` (M,) is True (needs at least n True)."""
    scores = jnp.where(mask, jax.random.uniform(key, mask.shape), -1.0)
    return jax.lax.top_k(scores, n)[1]


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
    positive = labels == 1 if branch_aware else labels > 0
    negative = labels == 0
    pseudo = labels > 1 if branch_aware else jnp.zeros_like(negative)
    n_pos = jnp.sum(positive)
    valid = (n_pos >= MIN_SET_SIZE) & (jnp.sum(negative) >= MIN_SET_SIZE)

    key_anchor, key_anchor_rep, key_neg, key_pseudo = jax.random.split(key, 4)
    anchor = sample_with_replacement(key_anchor_rep, positive, num_anchor)
    if positive.shape[0] >= num_anchor:  # static: small taps can never hold num_anchor positives
        anchor = jnp.where(n_pos >= num_anchor, sample_without_replacement(key_anchor, positive, num_anchor), anchor)
    neg = sample_with_replacement(key_neg, negative, num_anchor * neg_per_anchor)
    others = jnp.concatenate([anchor, neg])
    if pseudo_neg_per_anchor:
        pseudo_neg = sample_with_replacement(key_pseudo, pseudo, num_anchor * pseudo_neg_per_anchor)
        others = jnp.concatenate([others, pseudo_neg])

    a = f1[anchor]
    b = f2[others]
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
        columns.append(jnp.where(jnp.any(pseudo), pseudo_logits, MASKED_LOGIT))
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
