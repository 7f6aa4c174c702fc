"""Starting a run from a trained model (`train --init CHECKPOINT`, config key `init_checkpoint`; design §12).

The source is our checkpoint folder (from train or convert) or the reference's `.pth` (read with
`torch.load(weights_only=True)` and converted on the fly, `nets.reference`). Only weights cross
over: the U-Net's parameters and batch-norm statistics, and the projection heads when the source has
them (a `.pth` without heads, or a converted U-Net, leaves the run's freshly initialised heads). The
optimiser state, step, RNG, pseudo-Dice EMA and history start fresh. The source's architecture must
be the config's: otherwise one InputError naming the checkpoint and both architectures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from syncas_jax.common.checkpoint import is_checkpoint, load_checkpoint, load_meta
from syncas_jax.common.errors import InputError
from syncas_jax.nets.config import ModelConfig
from syncas_jax.nets.reference import (
    REFERENCE_ORIENTATION,
    check_against,
    convert_reference_state,
    load_reference_pth,
)
from syncas_jax.train.state import TrainState


def describe(architecture: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in architecture.items())


def reference_architecture(network_weights: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    """{ngf, depth, norm, head_bias} of a reference state dict: ngf from the stem, depth from the conv count
    (stem + 2 per encoder level + 2 bottleneck + 2 per decoder stage + head = 4 depth + 4)."""
    if "model.0.weight" not in network_weights:
        raise InputError(source, "reference checkpoint lacks 'model.0.weight' (not the SynCAS reference network?)")
    convs = sum(1 for key, value in network_weights.items() if key.endswith(".weight") and np.ndim(value) == 5)
    norm = "batch" if any(key.endswith(".running_mean") for key in network_weights) else "instance"
    ngf = int(np.shape(network_weights["model.0.weight"])[0])
    return {"ngf": ngf, "depth": (convs - 4) // 4, "norm": norm, "head_bias": False}


def check_architecture(found: dict[str, Any], model: ModelConfig, source: str) -> None:
    """InputError naming the checkpoint and both architectures unless `found` is the run's network."""
    wanted = model.architecture()
    found = ModelConfig.from_architecture(found).architecture()
    if found != wanted:
        differing = [key for key in wanted if found[key] != wanted[key]]
        raise InputError(
            source,
            f"its network ({describe(found)}) is not the config's ({describe(wanted)}); "
            f"set {', '.join(differing)} in the config to the checkpoint's values",
        )


def read_pretrained(path: str | os.PathLike, model: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """({'params', 'batch_stats'?} of the source, its metadata) after checking the architecture against `model`."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        if not is_checkpoint(path):
            raise InputError(path, "not a syncas_jax checkpoint folder (expected state/ and meta.json inside)")
        meta = load_meta(path)
        check_architecture(meta.get("model") or {}, model, source)
        tree, meta = load_checkpoint(path)
        if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict):
            raise InputError(path, "checkpoint holds no parameters")
        variables = {key: tree[key] for key in ("params", "batch_stats") if tree.get(key) is not None}
        return variables, meta
    if path.suffix == ".pth":
        reference = load_reference_pth(path)
        check_architecture(reference_architecture(reference["network_weights"], source), model, source)
        variables = convert_reference_state(
            reference["network_weights"], reference["projection_heads_weights"], depth=model.depth,
            norm=model.norm, source=source,
        )  # fmt: skip
        meta = {
            "model": model.architecture(),
            "epoch": reference["current_epoch"],
            "orientation": REFERENCE_ORIENTATION,
        }
        return variables, meta
    if path.exists():
        raise InputError(path, "not a checkpoint: expected a syncas_jax checkpoint folder or a reference .pth")
    raise InputError(path, "checkpoint not found")


def with_pretrained(state: TrainState, variables: dict[str, Any], source: str) -> TrainState:
    """`state` with the source's weights: every U-Net leaf, and each projection head the source has.

    Shapes are checked leaf by leaf (InputError naming `source`); values keep the state's dtypes.
    """
    params = dict(state.params)
    loaded = variables["params"]
    for name in params:
        if name in loaded:
            check_against(loaded[name], params[name], source)
            params[name] = _cast_like(loaded[name], params[name])
    if "unet" not in loaded:
        raise InputError(source, "checkpoint holds no U-Net parameters (expected params/unet)")
    batch_stats = state.batch_stats
    if batch_stats is not None:
        stats = variables.get("batch_stats")
        if not isinstance(stats, dict) or "unet" not in stats:
            raise InputError(source, "checkpoint holds no batch-norm statistics (expected batch_stats/unet)")
        check_against(stats, batch_stats, source)
        batch_stats = _cast_like(stats, batch_stats)
    return state.replace(params=params, batch_stats=batch_stats)


def _cast_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda value, ref: np.asarray(value, dtype=ref.dtype), tree, like)


def pretrained_heads(variables: dict[str, Any]) -> list[str]:
    """The projection heads the source provides (the rest stay freshly initialised)."""
    return sorted(name for name in variables["params"] if name.startswith("head"))
