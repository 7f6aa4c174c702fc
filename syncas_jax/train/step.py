"""The jitted training step and the validation counts.

Total loss = ½ (DiceCE(view 1) + DiceCE(view 2)) + weight · Σ_taps contrastive(view 1, view 2).
The step is a pure function of (state, batch, step key); everything random is derived from
(seed, global step), so a resumed run repeats an uninterrupted one bit for bit. With online
synthesis (`render`, `syncas_jax.data.online`) the batch holds CTA crops and the step renders
both views of every patch first, from its own key: views are a function of (seed, step, item).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from syncas_jax.data.augment import AugmentConfig, augment_batch
from syncas_jax.losses.contrastive import ContrastiveConfig, multi_tap_contrastive_loss
from syncas_jax.losses.dice_ce import SegmentationLossConfig, dice_ce_loss
from syncas_jax.nets.unet import SynCASNet
from syncas_jax.train.state import TrainState, keep_encoder_stats, variables

Batch = dict[str, jnp.ndarray]  # {"views": (B, V, Z, Y, X) float32, "label": (B, Z, Y, X) int}
Augment = Callable[[jax.Array, jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jnp.ndarray]]]
Render = Callable[[jax.Array, Batch], Batch]  # (key, CTA batch) → {"views", "label"}
RENDER_STREAM = 0x5EED  # fold_in tag of the rendering key (leaves the augmentation and loss keys as they were)


def step_key(seed: int, step: int) -> jax.Array:
    """The RNG key of global step `step` (augmentation and contrastive sampling)."""
    return jax.random.fold_in(jax.random.key(seed), step)


def make_augment(config: AugmentConfig | None) -> Augment | None:
    """`augment(key, views, label)` with these settings, or None when augmentation is off."""
    if config is None:
        return None
    return functools.partial(augment_batch, config=config)


def loss_and_updates(
    params: Any,
    batch_stats: Any,
    batch: Batch,
    key: jax.Array,
    *,
    model: SynCASNet,
    loss: ContrastiveConfig,
    negatives: tuple[int, int],
    segmentation_loss: SegmentationLossConfig = SegmentationLossConfig(),
) -> tuple[jnp.ndarray, tuple[dict[str, jnp.ndarray], Any]]:
    """Total SynCAS loss of one batch in train mode; returns (loss, (metrics, new batch stats))."""
    label = batch["label"]
    target = (label > 0).astype(jnp.int32)
    outputs = []
    for view in range(2):  # two passes: batch-norm statistics per view, as the reference
        x = batch["views"][:, view, ..., None]
        if batch_stats is None:
            outputs.append(model.apply(variables(params, None), x, train=True))
        else:
            out, updates = model.apply(variables(params, batch_stats), x, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
            outputs.append(out)
    (logits1, taps1), (logits2, taps2) = outputs
    weight = segmentation_loss.ce_foreground_weight
    segmentation = 0.5 * sum(dice_ce_loss(logits, target, foreground_weight=weight) for logits in (logits1, logits2))

    def head(tap: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
        return lambda f: model.apply({"params": params}, f, tap, method=SynCASNet.project)

    contrastive = jnp.float32(0.0)
    if loss.weight:  # static: a Dice + CE-only run (weight 0) does not sample or project anything
        contrastive = multi_tap_contrastive_loss(
            key, taps1, taps2, label, projections=[head(k) for k in range(4)], **loss.loss_kwargs(negatives)
        )
    total = segmentation + loss.weight * contrastive
    return total, ({"loss": total, "dice_ce": segmentation, "contrastive": contrastive}, batch_stats)


def train_step(
    state: TrainState,
    batch: Batch,
    key: jax.Array,
    *,
    model: SynCASNet,
    loss: ContrastiveConfig,
    negatives: tuple[int, int],
    augment: Augment | None = None,
    segmentation_loss: SegmentationLossConfig = SegmentationLossConfig(),
    render: Render | None = None,
    freeze_encoder: bool = False,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimisation step. `render(key, batch)` (online synthesis), then `augment(key, views, label)`
    run first, on device, when given. freeze_encoder: the encoder's batch statistics stay as they were
    (its parameters are frozen by the optimiser, `state.make_optimizer`)."""
    key_augment, key_loss = jax.random.split(key)
    if render is not None:
        batch = render(jax.random.fold_in(key, RENDER_STREAM), batch)
    if augment is not None:
        views, label = augment(key_augment, batch["views"], batch["label"])
        batch = {"views": views, "label": label}
    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)
    (_, (metrics, batch_stats)), grads = grad_fn(
        state.params,
        state.batch_stats,
        batch,
        key_loss,
        model=model,
        loss=loss,
        negatives=negatives,
        segmentation_loss=segmentation_loss,
    )
    if freeze_encoder:
        batch_stats = keep_encoder_stats(state.batch_stats, batch_stats)
    return apply_finite_gradients(state, grads, batch_stats, metrics)


def apply_finite_gradients(
    state: TrainState, grads: Any, batch_stats: Any, metrics: dict[str, jnp.ndarray]
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """The optimiser update, unless the gradient is not finite: then parameters and optimiser state
    stay as they were (the step still counts) and metrics["skipped"] is 1.

    A batch of constant patches (e.g. two random patches entirely in air) makes every batch-norm
    variance ~0; each such layer multiplies the backward pass by ~1/sqrt(eps), and on some CPUs
    the gradient overflows. One such step must not turn every parameter into NaN.
    """
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    kept = state.replace(step=updated.step, batch_stats=batch_stats)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
    metrics = {**metrics, "grad_norm": jnp.where(finite, grad_norm, 0.0), "skipped": 1.0 - finite}
    return state, metrics


def jit_train_step(
    model: SynCASNet,
    loss: ContrastiveConfig,
    negatives: tuple[int, int],
    augment: Augment | None = None,
    segmentation_loss: SegmentationLossConfig = SegmentationLossConfig(),
    render: Render | None = None,
    freeze_encoder: bool = False,
) -> StepFn:
    """The jitted step for one (negatives, pseudo-negatives) setting; the state buffer is donated.

    render: online synthesis (`syncas_jax.data.online.OnlineRenderer`), or None for stored views;
    freeze_encoder: see `train_step`.
    """
    step = functools.partial(
        train_step, model=model, loss=loss, negatives=negatives, augment=augment,
        segmentation_loss=segmentation_loss, render=render, freeze_encoder=freeze_encoder,
    )  # fmt: skip
    return jax.jit(step, donate_argnums=(0,))


def validation_key(seed: int, batch_index: int) -> jax.Array:
    """The rendering key of validation batch `batch_index`: the same every epoch."""
    return jax.random.fold_in(jax.random.key(seed + 1), batch_index)


def validation_counts(
    state: TrainState, batch: Batch, key: jax.Array | None = None, *, model: SynCASNet, render: Render | None = None
) -> jnp.ndarray:
    """Eval-mode (TP, FP, FN) of the foreground class on view 1 of a validation batch.

    render: online synthesis renders view 1 from the CTA batch with `key` first (a realistic render).
    """
    if render is not None:
        batch = render(key, batch)
    logits, _ = model.apply(variables(state.params, state.batch_stats), batch["views"][:, 0, ..., None], train=False)
    prediction = jnp.argmax(logits, axis=-1) == 1
    target = batch["label"] > 0
    tp = jnp.sum(prediction & target)
    fp = jnp.sum(prediction & ~target)
    fn = jnp.sum(~prediction & target)
    return jnp.stack([tp, fp, fn]).astype(jnp.float32)


def jit_validation_counts(model: SynCASNet, render: Render | None = None) -> Callable[..., jnp.ndarray]:
    """validate(state, batch, key=None) → (TP, FP, FN), jitted."""
    return jax.jit(functools.partial(validation_counts, model=model, render=render))


def pseudo_dice(counts: np.ndarray) -> float:
    """Global foreground Dice 2TP / (2TP + FP + FN) from summed counts; 0 when undefined."""
    tp, fp, fn = (float(c) for c in counts)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else 0.0
