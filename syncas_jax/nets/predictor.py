"""A trained U-Net as a predict function for the sliding window: weights in, logits out.

`unet_variables` takes the U-Net part out of a SynCASNet state (checkpoint or memory) and
checks it against the architecture; `predictor` wraps it with the eval-mode forward pass
as a `jax.tree_util.Partial`, so the weights enter jitted code as arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.nets.config import ModelConfig
from syncas_jax.nets.reference import check_against
from syncas_jax.nets.sliding_window import PredictFn
from syncas_jax.nets.unet import abstract_variables, build_unet


@functools.cache
def _logits_fn(model: ModelConfig, dtype: str) -> Callable[[Any, Any], Any]:
    """One logits function per architecture and dtype, so every model of that shape shares the jit cache."""
    module = build_unet(model, dtype)

    def logits(variables: Any, windows: Any) -> Any:
        out, _ = module.apply(variables, windows, train=False)
        return out.astype(jnp.float32)

    return logits


def unet_variables(state: Any, model: ModelConfig, source: str = "checkpoint") -> dict[str, Any]:
    """{'params', 'batch_stats'} of the U-Net inside a SynCASNet state, checked against `model`.

    Raises InputError (naming `source`) for a missing or mismatching parameter.
    """
    if not isinstance(state, dict) or not isinstance(state.get("params"), dict) or "unet" not in state["params"]:
        raise InputError(source, "checkpoint holds no U-Net parameters (expected params/unet)")
    variables = {"params": state["params"]["unet"]}
    if model.norm == "batch":
        stats = state.get("batch_stats")
        if not isinstance(stats, dict) or "unet" not in stats:
            raise InputError(source, "checkpoint holds no batch-norm statistics (expected batch_stats/unet)")
        variables["batch_stats"] = stats["unet"]
    expected = {key: value["unet"] for key, value in abstract_variables(model).items()}
    try:
        check_against(variables, expected, source)
    except InputError as error:
        architecture = ", ".join(f"{k}={v}" for k, v in model.architecture().items())
        raise InputError(
            source, f"weights do not match the architecture in its metadata ({architecture}): {error.problem}"
        ) from None
    return variables


def predictor(unet: dict[str, Any], model: ModelConfig, dtype: Any = jnp.float32) -> PredictFn:
    """predict_fn (B, Z, Y, X, 1) float32 → logits (B, Z, Y, X, 2) float32, eval mode, weights on the device."""
    weights = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), unet))
    return jax.tree_util.Partial(_logits_fn(model, jnp.dtype(dtype).name), weights)
