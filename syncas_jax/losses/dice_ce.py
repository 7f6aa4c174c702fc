"""Soft Dice + cross-entropy (nnU-Net's DC_and_CE_loss with batch_dice=False, do_bg=False)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

DICE_SMOOTH = 1e-5


@dataclass(frozen=True)
class SegmentationLossConfig:
    """Dice + CE settings. ce_foreground_weight: cross-entropy weight of coronary voxels (1 = the
    reference); a larger weight gets short runs past the all-background start faster."""

    ce_foreground_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.ce_foreground_weight <= 0:
            raise ValueError(f"ce_foreground_weight must be > 0, got {self.ce_foreground_weight}")


def soft_dice(probs: jnp.ndarray, onehot: jnp.ndarray, smooth: float = DICE_SMOOTH) -> jnp.ndarray:
    """Per-sample, per-class soft Dice. probs, onehot: (B, ..., C) → (B, C).

    Dice = (2 tp + smooth) / max(2 tp + fp + fn + smooth, 1e-8), sums over the spatial axes.
    """
    axes = tuple(range(1, probs.ndim - 1))
    tp = jnp.sum(probs * onehot, axis=axes)
    fp = jnp.sum(probs * (1 - onehot), axis=axes)
    fn = jnp.sum((1 - probs) * onehot, axis=axes)
    return (2 * tp + smooth) / jnp.maximum(2 * tp + fp + fn + smooth, 1e-8)


def dice_ce_loss(
    logits: jnp.ndarray, target: jnp.ndarray, smooth: float = DICE_SMOOTH, foreground_weight: float = 1.0
) -> jnp.ndarray:
    """−mean foreground soft Dice + mean voxel cross-entropy.

    logits: (B, Z, Y, X, C) float; target: (B, Z, Y, X) integer class ids in [0, C).
    foreground_weight: cross-entropy weight of the classes > 0 (background 1), a weighted mean as
    PyTorch's `CrossEntropyLoss(weight=...)`; 1 is the reference's plain mean.
    Returns a scalar (float32).
    """
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(target, num_classes, dtype=jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    dice = soft_dice(jnp.exp(log_probs), onehot, smooth)[:, 1:]
    weight = jnp.where(target > 0, jnp.float32(foreground_weight), 1.0)
    cross_entropy = -jnp.sum(weight * jnp.sum(log_probs * onehot, axis=-1)) / jnp.sum(weight)
    return -jnp.mean(dice) + cross_entropy
