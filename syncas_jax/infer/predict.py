"""Checkpoints for inference: a checkpoint folder or a reference `.pth` → a predict function and settings.

`load_model_for_inference` returns the predict function the sliding window calls
(`syncas_jax.nets.predictor`); `inference_settings` picks the target spacing and window size
(override > the checkpoint's training config > the reference defaults).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncas_jax.common.checkpoint import is_checkpoint, load_checkpoint
from syncas_jax.common.errors import InputError
from syncas_jax.common.precision import PRECISIONS, compute_dtype
from syncas_jax.data.layout import PATCH_SIZE, TARGET_SPACING
from syncas_jax.nets.config import ModelConfig
from syncas_jax.nets.predictor import predictor, unet_variables
from syncas_jax.nets.reference import load_reference_model
from syncas_jax.nets.sliding_window import PredictFn

__all__ = ["PRECISIONS", "inference_settings", "load_model_for_inference"]


def _read(path: Path) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of a checkpoint folder or a reference .pth."""
    if path.is_dir():
        if not is_checkpoint(path):
            raise InputError(path, "not a syncas_jax checkpoint folder (expected state/ and meta.json inside)")
        return load_checkpoint(path)
    if path.suffix == ".pth":
        return load_reference_model(path)
    if path.exists():
        raise InputError(path, "not a checkpoint: expected a syncas_jax checkpoint folder or a reference .pth")
    raise InputError(path, "checkpoint not found")


def load_model_for_inference(path: str | os.PathLike, *, precision: str = "auto") -> tuple[PredictFn, dict[str, Any]]:
    """Load a checkpoint folder or a reference `.pth` → (predict_fn, meta).

    predict_fn: (B, Z, Y, X, 1) float32 → logits (B, Z, Y, X, 2) float32, eval mode (running
    batch-norm statistics), a `jax.tree_util.Partial` holding the weights on the default device.
    meta: the checkpoint's metadata; meta["model"] = {ngf, depth, norm, head_bias}, meta["config"] when
    it came from training. precision: see `syncas_jax.common.precision` ("infer").
    Raises InputError naming the path for anything unusable.
    """
    path = Path(path)
    state, meta = _read(path)
    if not isinstance(meta.get("model"), dict):
        raise InputError(path, "checkpoint metadata has no 'model' entry ({ngf, depth, norm})")
    try:
        model = ModelConfig.from_architecture(meta["model"])
    except ValueError as error:
        raise InputError(path, f"checkpoint metadata has an invalid 'model' entry: {error}") from None
    unet = unet_variables(state, model, str(path))
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    predict_fn = predictor(unet, model, compute_dtype(precision, "infer"))
    return predict_fn, {**meta, "model": model.architecture()}


def inference_settings(
    meta: dict[str, Any],
    spacing: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """(target spacing mm, patch voxels), each (z, y, x): override > checkpoint config > reference default.

    Raises ValueError for a patch not divisible by 2**depth of meta["model"].
    """
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    spacing = spacing if spacing is not None else config.get("spacing") or TARGET_SPACING
    patch_size = patch_size if patch_size is not None else config.get("patch_size") or PATCH_SIZE
    spacing = tuple(float(s) for s in spacing)
    patch_size = tuple(int(p) for p in patch_size)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    multiple = ModelConfig.from_architecture(meta.get("model", {})).size_multiple
    if len(patch_size) != 3 or any(p < 2 * multiple or p % multiple for p in patch_size):
        raise ValueError(
            f"patch size must be three multiples of {multiple} (>= {2 * multiple}) for this network, got {patch_size}"
        )
    return spacing, patch_size  # type: ignore[return-value]
