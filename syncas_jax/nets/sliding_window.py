"""Sliding-window prediction of a whole preprocessed volume (nnU-Net's scheme, design §6).

* Window placement: nnU-Net's ``compute_steps_for_sliding_window`` — per axis
  ``ceil((image − patch) / (patch · step)) + 1`` windows whose starts are spread evenly
  (rounded) from 0 to ``image − patch``. Windows are visited in C order (z, then y, x).
* Weighting: nnU-Net's ``compute_gaussian`` — a centred Gaussian with σ = patch / 8
  per axis (``scipy.ndimage.gaussian_filter`` of a delta), scaled so its maximum is 10,
  zeros replaced by the smallest nonzero value.
* Test-time augmentation: the softmax of all 8 mirror combinations of the three
  spatial axes (or of the identity only), flipped back and averaged per window
  (nnU-Net v1's ``_internal_maybe_mirror_and_pred_3D``); the stitched result is
  Σ gaussian · softmax / Σ gaussian over the windows covering each voxel.
* Images smaller than the patch along an axis are padded with 0 on both sides
  (nnU-Net's ``pad_nd_image``, half below, rest above) and cropped back afterwards.

The network never sees more than ``batch`` windows at once. Three jitted pieces run on
the default device: window extraction and accumulation (compiled once per padded image
shape, small), and the TTA forward (compiled once per (batch, patch) shape and model
architecture). The accumulators, (Z, Y, X, C) and (Z, Y, X) float32, stay on the device
and are updated in place (buffer donation).

A predictor is any JAX-traceable ``predict_fn(windows) -> logits`` with windows
(B, pz, py, px, 1) float32 and logits (B, pz, py, px, C) (channels last, as `UNet3D`).
Pass model weights as a ``jax.tree_util.Partial(apply, variables)`` so they enter the
compiled function as arguments rather than baked-in constants; a plain function is used
as a static closure.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.ndimage import gaussian_filter

PredictFn = Callable[[jax.Array], jax.Array]
ProgressFn = Callable[[Iterable[Any], int], Iterable[Any]]

#: The 8 mirror combinations of the spatial axes (0 = z, 1 = y, 2 = x), identity first.
MIRROR_COMBINATIONS: tuple[tuple[int, ...], ...] = tuple(
    axes for r in range(4) for axes in itertools.combinations((0, 1, 2), r)
)


def _size3(values: Sequence[int], name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in values)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{name} must be three positive integers (z, y, x), got {values}")
    return values  # type: ignore[return-value]


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> list[list[int]]:
    """Window start indices per axis (voxels), nnU-Net's compute_steps_for_sliding_window.

    image_size ≥ patch_size per axis (pad first); 0 < step ≤ 1 is the target step as a
    fraction of the patch. Returns [[z starts], [y starts], [x starts]].
    """
    image_size, patch_size = _size3(image_size, "image_size"), _size3(patch_size, "patch_size")
    if any(i < p for i, p in zip(image_size, patch_size)):
        raise ValueError(f"image {image_size} is smaller than the patch {patch_size}; pad it first")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    steps = []
    for image, patch in zip(image_size, patch_size):
        count = int(np.ceil((image - patch) / (patch * step))) + 1
        stride = (image - patch) / (count - 1) if count > 1 else 0.0
        steps.append([int(np.round(stride * i)) for i in range(count)])
    return steps


def window_starts(image_size: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> np.ndarray:
    """int32 (N, 3) (z, y, x) start of every window, in C order (z outermost)."""
    steps = compute_steps(image_size, patch_size, step)
    return np.array(list(itertools.product(*steps)), dtype=np.int32).reshape(-1, 3)


@functools.lru_cache(maxsize=4)
def _gaussian(patch_size: tuple[int, int, int], sigma_scale: float, value_scaling_factor: float) -> np.ndarray:
    delta = np.zeros(patch_size)
    delta[tuple(p // 2 for p in patch_size)] = 1
    weights = gaussian_filter(delta, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    weights = (weights / (np.max(weights) / value_scaling_factor)).astype(np.float32)
    zero = weights == 0
    if zero.any():
        weights[zero] = np.min(weights[~zero])
    weights.flags.writeable = False
    return weights


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10.0
) -> np.ndarray:
    """float32 (pz, py, px) window weights, nnU-Net's compute_gaussian (read-only, cached)."""
    return _gaussian(_size3(patch_size, "patch_size"), float(sigma_scale), float(value_scaling_factor))


def pad_to_patch(image: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad (Z, Y, X) up to at least the patch (half below, rest above).

    Returns (padded image, slices that cut the original region back out of the padded grid).
    """
    shape = image.shape
    below = [max(p - s, 0) // 2 for s, p in zip(shape, patch_size)]
    above = [max(p - s, 0) - b for s, p, b in zip(shape, patch_size, below)]
    region = tuple(slice(b, b + s) for b, s in zip(below, shape))
    if not any(below) and not any(above):
        return image, region
    return np.pad(image, list(zip(below, above)), mode="constant", constant_values=0), region


def as_predictor(predict_fn: PredictFn) -> jax.tree_util.Partial:
    """Wrap a function as a pytree so it can be passed to jitted code (weights stay arguments)."""
    return predict_fn if isinstance(predict_fn, jax.tree_util.Partial) else jax.tree_util.Partial(predict_fn)


@functools.partial(jax.jit, static_argnames=("patch_size",))
def _extract_windows(image: jax.Array, starts: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
    """(Z, Y, X) image, int32 (B, 3) starts → (B, pz, py, px) windows."""
    return jax.vmap(lambda start: lax.dynamic_slice(image, tuple(start), patch_size))(starts)


def mirrored_softmax(
    predict_fn: PredictFn, windows: jax.Array, mirror_axes: tuple[tuple[int, ...], ...] = ((),)
) -> jax.Array:
    """Mean over `mirror_axes` of flip⁻¹(softmax(predict_fn(flip(windows)))): (B, pz, py, px) → (B, pz, py, px, C).

    The network runs once per combination inside a `lax.scan`, so it is compiled once.
    """
    x = windows[..., None]
    flips = [functools.partial(jnp.flip, axis=tuple(a + 1 for a in axes)) for axes in mirror_axes]

    def one(index: jax.Array | int) -> jax.Array:
        flipped = lax.switch(index, flips, x) if len(flips) > 1 else flips[0](x)
        probs = jax.nn.softmax(predict_fn(flipped).astype(jnp.float32), axis=-1)
        return lax.switch(index, flips, probs) if len(flips) > 1 else flips[0](probs)

    total = one(0)
    if len(flips) > 1:
        total, _ = lax.scan(lambda acc, i: (acc + one(i), None), total, jnp.arange(1, len(flips)))
    return total / len(flips)


_mirrored_softmax = jax.jit(mirrored_softmax, static_argnames=("mirror_axes",))


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _accumulate(
    acc: jax.Array, weight: jax.Array, probs: jax.Array, gaussian: jax.Array, starts: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """acc (Z, Y, X, C) += gaussian · probs[b] and weight (Z, Y, X) += gaussian at each valid window b."""

    def body(b: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        acc, weight = carry
        start = (starts[b, 0], starts[b, 1], starts[b, 2])
        g = jnp.where(valid[b], gaussian, 0.0)
        contribution = jnp.where(valid[b], probs[b] * gaussian[..., None], 0.0)
        acc = lax.dynamic_update_slice(
            acc, lax.dynamic_slice(acc, (*start, 0), probs.shape[1:]) + contribution, (*start, 0)
        )
        weight = lax.dynamic_update_slice(weight, lax.dynamic_slice(weight, start, gaussian.shape) + g, start)
        return acc, weight

    return lax.fori_loop(0, probs.shape[0], body, (acc, weight))


@jax.jit
def _normalise(acc: jax.Array, weight: jax.Array) -> jax.Array:
    """(Z, Y, X, C) / (Z, Y, X) → (C, Z, Y, X)."""
    return jnp.moveaxis(acc / weight[..., None], -1, 0)


def predict_sliding_window(
    image: np.ndarray,
    predict_fn: PredictFn,
    patch_size: Sequence[int],
    step: float = 0.5,
    tta: bool = True,
    batch: int = 1,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Gaussian-weighted, optionally mirror-averaged softmax of a whole volume.

    image: (Z, Y, X) float32, preprocessed. predict_fn: see the module docstring.
    patch_size: (pz, py, px) window in voxels. step: window step as a fraction of the
    patch. tta: average the 8 mirror combinations. batch: windows per network call
    (the last batch is padded with repeats that do not count).
    progress: optional ``progress(iterable, total) -> iterable`` over the window batches.
    Returns float32 (C, Z, Y, X) class probabilities (summing to 1 per voxel).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) image, got shape {image.shape}")
    patch_size = _size3(patch_size, "patch_size")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    padded, region = pad_to_patch(image, patch_size)
    starts = window_starts(padded.shape, patch_size, step)
    count = len(starts)
    batches = -(-count // batch)
    starts = np.concatenate([starts, np.repeat(starts[-1:], batches * batch - count, axis=0)])
    valid = np.arange(batches * batch) < count

    predictor = as_predictor(predict_fn)
    mirror_axes = MIRROR_COMBINATIONS if tta else ((),)
    gaussian = jnp.asarray(gaussian_importance_map(patch_size))
    image_device = jnp.asarray(padded)
    probe = jax.ShapeDtypeStruct((batch, *patch_size, 1), jnp.float32)
    logits_shape = jax.eval_shape(predictor, probe).shape
    if logits_shape[:-1] != probe.shape[:-1]:
        raise ValueError(f"predict_fn must map {probe.shape} windows to (..., C) logits, got {logits_shape}")
    acc = jnp.zeros((*padded.shape, logits_shape[-1]), jnp.float32)
    weight = jnp.zeros(padded.shape, jnp.float32)

    indices: Iterable[int] = range(batches)
    if progress is not None:
        indices = progress(indices, batches)
    for i in indices:
        batch_starts = jnp.asarray(starts[i * batch : (i + 1) * batch])
        windows = _extract_windows(image_device, batch_starts, patch_size)
        probs = _mirrored_softmax(predictor, windows, mirror_axes)
        acc, weight = _accumulate(
            acc, weight, probs, gaussian, batch_starts, jnp.asarray(valid[i * batch : (i + 1) * batch])
        )
        acc.block_until_ready()  # keeps the progress bar honest; the next batch is queued right after
    result = np.asarray(_normalise(acc, weight))
    del acc, weight
    return np.ascontiguousarray(result[(slice(None), *region)])
