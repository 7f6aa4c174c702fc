"""Model loading and whole-volume prediction, shared by `infer` (the CLI) and training's evaluation.

`load_model_for_inference` turns a checkpoint folder or a reference `.pth` into a
predict function; `predictor_from_state` does the same for weights in memory;
`predict_volume` runs preprocessing → sliding window → export to the input grid.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from syncas_jax import io
from syncas_jax.data.preprocess import PATCH_SIZE, TARGET_SPACING, preprocess_image, restore_to_original
from syncas_jax.sliding_window import PredictFn, predict_sliding_window

PRECISIONS = ("auto", "float32", "bfloat16")


# ------------------------------------------------------------------------------ model


@functools.cache
def _unet_logits(ngf: int, depth: int, norm: str, head_bias: bool, dtype: str) -> Callable[[Any, Any], Any]:
    """One logits function per architecture, so the jit cache is shared by every model of that shape."""
    import jax.numpy as jnp

    from syncas_jax.nets.unet import UNet3D

    module = UNet3D(ngf=ngf, depth=depth, norm=norm, head_bias=head_bias, dtype=jnp.dtype(dtype))

    def logits(variables: Any, windows: Any) -> Any:
        out, _ = module.apply(variables, windows, train=False)
        return out.astype(jnp.float32)

    return logits


def _compute_dtype(precision: str) -> str:
    import jax

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":  # bf16 was no faster than f32 (TF32) on an H100 for this network, and less exact
        return "bfloat16" if jax.default_backend() == "tpu" else "float32"
    return precision


def _model_spec(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """{ngf, depth, norm, head_bias} from checkpoint metadata (reference defaults where absent)."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise io.InputError(source, "checkpoint metadata has no 'model' entry ({ngf, depth, norm})")
    try:
        return {
            "ngf": int(model.get("ngf", 16)),
            "depth": int(model.get("depth", 4)),
            "norm": str(model.get("norm", "batch")),
            "head_bias": bool(model.get("head_bias", False)),
        }
    except (TypeError, ValueError):
        raise io.InputError(source, f"checkpoint metadata has an invalid 'model' entry: {model}") from None


def _unet_variables(state: Any, spec: dict[str, Any], source: str) -> dict[str, Any]:
    """The U-Net part ({'params', 'batch_stats'}) of a SynCASNet state, checked against the architecture."""
    from syncas_jax.nets.convert import check_against
    from syncas_jax.nets.unet import NORMS, abstract_variables

    norm = spec["norm"]
    if norm not in NORMS:
        raise io.InputError(source, f"checkpoint metadata names norm {norm!r}, expected one of {NORMS}")
    if not isinstance(state, dict) or not isinstance(state.get("params"), dict) or "unet" not in state["params"]:
        raise io.InputError(source, "checkpoint holds no U-Net parameters (expected params/unet)")
    variables = {"params": state["params"]["unet"]}
    if norm == "batch":
        stats = state.get("batch_stats")
        if not isinstance(stats, dict) or "unet" not in stats:
            raise io.InputError(source, "checkpoint holds no batch-norm statistics (expected batch_stats/unet)")
        variables["batch_stats"] = stats["unet"]
    expected = abstract_variables(**spec)
    expected = {key: value["unet"] for key, value in expected.items()}
    try:
        check_against(variables, expected, source)
    except io.InputError as error:
        raise io.InputError(
            source,
            "weights do not match the architecture in its metadata "
            f"({', '.join(f'{k}={v}' for k, v in spec.items())}): "
            f"{error.problem}",
        ) from None
    return variables


def load_model_for_inference(path: str | os.PathLike, *, precision: str = "auto") -> tuple[PredictFn, dict[str, Any]]:
    """Load a checkpoint folder or a reference `.pth` → (predict_fn, meta).

    predict_fn: (B, Z, Y, X, 1) float32 → logits (B, Z, Y, X, 2) float32, eval mode (running
    batch-norm statistics), a `jax.tree_util.Partial` holding the weights on the default device.
    meta: the checkpoint's metadata; meta["model"] = {ngf, depth, norm, head_bias}, meta["config"] when
    it came from training. precision: "auto" (bfloat16 compute on TPU, else float32),
    "float32" or "bfloat16". Raises io.InputError naming the path for anything unusable.
    """
    import jax

    from syncas_jax.checkpoint import is_checkpoint, load_checkpoint

    path = Path(path)
    source = str(path)
    if path.is_dir():
        if not is_checkpoint(path):
            raise io.InputError(path, "not a syncas_jax checkpoint folder (expected state/ and meta.json inside)")
        state, meta = load_checkpoint(path)
        spec = _model_spec(meta, source)
        variables = _unet_variables(state, spec, source)
    elif path.suffix == ".pth":
        from syncas_jax.nets.convert import load_reference_model

        state, meta = load_reference_model(path)
        spec = _model_spec(meta, source)
        variables = _unet_variables(state, spec, source)
    elif path.exists():
        raise io.InputError(path, "not a checkpoint: expected a syncas_jax checkpoint folder or a reference .pth")
    else:
        raise io.InputError(path, "checkpoint not found")
    variables = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), variables))
    meta = {**meta, "model": spec}
    return _predictor(variables, meta["model"], precision), meta


def _predictor(variables: dict[str, Any], model: dict[str, Any], precision: str) -> PredictFn:
    import jax

    spec = _model_spec({"model": model}, "model")
    fn = _unet_logits(spec["ngf"], spec["depth"], spec["norm"], spec["head_bias"], _compute_dtype(precision))
    return jax.tree_util.Partial(fn, variables)


def predictor_from_state(state: dict[str, Any], model: dict[str, Any], *, precision: str = "auto") -> PredictFn:
    """predict_fn for a SynCASNet state in memory ({'params', 'batch_stats'}); model = {ngf, depth, norm, head_bias}."""
    unet = {"params": state["params"]["unet"]}
    if state.get("batch_stats") is not None:
        unet["batch_stats"] = state["batch_stats"]["unet"]
    return _predictor(unet, model, precision)


def inference_settings(
    meta: dict[str, Any],
    spacing: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """(target spacing mm, patch voxels), each (z, y, x): override > checkpoint config > SPEC default.

    Raises ValueError for a patch not divisible by 2**depth of meta["model"].
    """
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    spacing = spacing if spacing is not None else config.get("spacing") or TARGET_SPACING
    patch_size = patch_size if patch_size is not None else config.get("patch_size") or PATCH_SIZE
    spacing = tuple(float(s) for s in spacing)
    patch_size = tuple(int(p) for p in patch_size)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    multiple = 2 ** int(meta.get("model", {}).get("depth", 4))
    if len(patch_size) != 3 or any(p < 2 * multiple or p % multiple for p in patch_size):
        raise ValueError(
            f"patch size must be three multiples of {multiple} (>= {2 * multiple}) for this network, got {patch_size}"
        )
    return spacing, patch_size  # type: ignore[return-value]


# ---------------------------------------------------------------------------- one case


@dataclass
class Prediction:
    """segmentation: uint8 (Z, Y, X) class map on the input grid; probability: float32 (Z, Y, X) coronary
    probability on the input grid (None unless asked for); seconds: wall time per stage."""

    segmentation: np.ndarray
    probability: np.ndarray | None
    seconds: dict[str, float]


def predict_volume(
    volume: io.Volume,
    predict_fn: PredictFn,
    *,
    spacing: Sequence[float] = TARGET_SPACING,
    patch_size: Sequence[int] = PATCH_SIZE,
    step: float = 0.5,
    tta: bool = True,
    batch: int = 1,
    probabilities: bool = False,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> Prediction:
    """Segment one CT volume (HU, (z, y, x)): preprocess → sliding window → back to the input grid.

    spacing: target spacing (z, y, x) mm; patch_size: window (z, y, x) voxels; step, tta,
    batch, progress: see `predict_sliding_window`. With two classes only the coronary
    channel is resampled and thresholded at 0.5 (the argmax of the two-class softmax);
    otherwise all channels are resampled and the argmax taken.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    image, properties = preprocess_image(volume, spacing)
    seconds["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    softmax = predict_sliding_window(image, predict_fn, patch_size, step=step, tta=tta, batch=batch, progress=progress)
    del image
    seconds["sliding_window"] = time.perf_counter() - start

    start = time.perf_counter()
    probability = None
    if softmax.shape[0] == 2:
        probability = restore_to_original(softmax[1], properties, is_label=False, outside=0.0).astype(np.float32)
        np.clip(probability, 0.0, 1.0, out=probability)  # float rounding of the softmax can exceed 1 by an ulp
        del softmax
        segmentation = (probability > 0.5).astype(np.uint8)
    else:
        restored = restore_to_original(softmax, properties, is_label=False)
        del softmax
        segmentation = np.argmax(restored, axis=0).astype(np.uint8)
        if probabilities:
            probability = np.clip(restored[1], 0.0, 1.0).astype(np.float32)
        del restored
    seconds["export"] = time.perf_counter() - start
    return Prediction(segmentation, probability if probabilities else None, seconds)
