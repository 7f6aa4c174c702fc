"""Reference PyTorch checkpoint (`.pth`) → our Flax variables.

The reference network is one flat `nn.Sequential` (`model.{i}`): each conv block is
three modules (Conv3d, BatchNorm3d, ReLU), each encoder level ends with a MaxPool and
each decoder stage starts with an Upsample, so for the defaults the convs sit at
0, 3, 6, (pool 9), 10, 13, ..., and the head at 65. `reference_layout` derives these
indices from ngf/depth instead of listing them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.nets.config import ModelConfig

REFERENCE_KEYS = ("network_weights", "projection_heads_weights")
#: The reference trained on arrays as SimpleITK reads them, with no reorientation: the file's own axes
#: (`data.orientation.ORIENTATIONS`; design §12). Converted checkpoints record it, so inference keeps it.
REFERENCE_ORIENTATION = "file"


def reference_layout(depth: int = 4) -> list[tuple[int, str]]:
    """(Sequential index of the conv, our block name) for every conv, the head last."""
    layout: list[tuple[int, str]] = []
    index = 0

    def conv_block(name: str) -> None:
        nonlocal index
        layout.append((index, name))
        index += 3  # conv, norm, relu

    conv_block("stem")
    for level in range(1, depth + 1):
        conv_block(f"enc{level}_conv1")
        conv_block(f"enc{level}_conv2")
        index += 1  # max pool
    conv_block("bottleneck_conv1")
    conv_block("bottleneck_conv2")
    for stage in range(1, depth + 1):
        index += 1  # upsample
        conv_block(f"dec{stage}_conv1")
        conv_block(f"dec{stage}_conv2")
    layout.append((index, "head"))
    return layout


def tap_indices(depth: int = 4) -> tuple[int, int, int, int]:
    """Sequential indices of the four tapped ReLUs: (26, 47, 54, 64) for depth 4."""
    conv_at = dict((name, i) for i, name in reference_layout(depth))
    return (
        conv_at[f"enc{depth}_conv1"] + 2,
        conv_at[f"dec{depth - 2}_conv1"] + 2,
        conv_at[f"dec{depth - 1}_conv1"] + 2,
        conv_at[f"dec{depth}_conv2"] + 2,
    )


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch Conv3d weight (out, in, d, h, w) → Flax kernel (d, h, w, in, out)."""
    return np.transpose(weight, (2, 3, 4, 1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight (out, in) → Flax kernel (in, out)."""
    return np.transpose(weight, (1, 0))


def _take(state: dict[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in state:
        raise InputError(source, f"reference checkpoint lacks '{key}' (not the SynCAS reference architecture?)")
    return np.asarray(state[key], dtype=np.float32)


def convert_reference_state(
    network_weights: dict[str, np.ndarray],
    heads_weights: dict[str, np.ndarray] | None,
    *,
    depth: int = 4,
    norm: str = "batch",
    source: str = "checkpoint",
) -> dict[str, Any]:
    """Map reference state dicts onto {'params': ..., 'batch_stats': ...} of `SynCASNet`.

    Shapes are not checked here; `check_against` compares with an initialised model.
    """
    unet_params: dict[str, Any] = {}
    unet_stats: dict[str, Any] = {}
    for index, name in reference_layout(depth):
        kernel = conv_kernel(_take(network_weights, f"model.{index}.weight", source))
        if name == "head":
            unet_params[name] = {"kernel": kernel}
            continue
        conv: dict[str, np.ndarray] = {"kernel": kernel}
        if norm == "instance":
            conv["bias"] = _take(network_weights, f"model.{index}.bias", source)
        unet_params[name] = {"conv": conv}
        bn = f"model.{index + 1}"
        unet_params[name]["norm"] = {
            "scale": _take(network_weights, f"{bn}.weight", source),
            "bias": _take(network_weights, f"{bn}.bias", source),
        }
        if norm == "batch":
            unet_stats[name] = {
                "norm": {
                    "mean": _take(network_weights, f"{bn}.running_mean", source),
                    "var": _take(network_weights, f"{bn}.running_var", source),
                }
            }
    params: dict[str, Any] = {"unet": unet_params}
    if heads_weights:
        for k in range(4):
            params[f"head{k}"] = {
                "fc1": {
                    "kernel": dense_kernel(_take(heads_weights, f"{k}.mlp.0.weight", source)),
                    "bias": _take(heads_weights, f"{k}.mlp.0.bias", source),
                },
                "fc2": {
                    "kernel": dense_kernel(_take(heads_weights, f"{k}.mlp.2.weight", source)),
                    "bias": _take(heads_weights, f"{k}.mlp.2.bias", source),
                },
            }
    variables: dict[str, Any] = {"params": params}
    if norm == "batch":
        variables["batch_stats"] = {"unet": unet_stats}
    return variables


def check_against(converted: Any, expected: Any, source: str) -> None:
    """Raise InputError naming the first parameter that is missing, extra or of another shape than in `expected`."""
    import jax

    flat_converted = dict(jax.tree_util.tree_flatten_with_path(converted)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = jax.tree_util.keystr(path)
        if path not in flat_converted:
            raise InputError(source, f"checkpoint has no parameter for {name}")
        got = np.shape(flat_converted[path])
        if got != np.shape(leaf):
            raise InputError(source, f"shape mismatch at {name}: checkpoint {got}, model {np.shape(leaf)}")
    extra = set(flat_converted) - {path for path, _ in jax.tree_util.tree_flatten_with_path(expected)[0]}
    if extra:
        name = min(jax.tree_util.keystr(path) for path in extra)
        raise InputError(source, f"checkpoint has a parameter the model does not: {name}")


def load_reference_pth(path: str | os.PathLike) -> dict[str, Any]:
    """Read a reference `.pth` safely (torch.load with weights_only=True) into numpy state dicts."""
    try:
        import torch
    except ImportError:
        raise InputError(path, "reading a .pth needs PyTorch: pip install 'syncas_jax[torch]'") from None
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(path, f"not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise InputError(path, f"not a SynCAS reference checkpoint: no 'network_weights' (found {found})")

    def to_numpy(state: Any) -> dict[str, np.ndarray]:
        if not isinstance(state, dict):
            raise InputError(path, f"expected a state dict, got {type(state).__name__}")
        return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}

    return {
        "network_weights": to_numpy(checkpoint["network_weights"]),
        "projection_heads_weights": to_numpy(checkpoint.get("projection_heads_weights") or {}),
        "current_epoch": int(checkpoint.get("current_epoch", 0) or 0),
        "init_args": checkpoint.get("init_args"),
    }


def load_reference_model(
    path: str | os.PathLike, model: ModelConfig = ModelConfig()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a reference `.pth` and return (variables for `model`'s SynCASNet, meta) after checking every shape."""
    from syncas_jax.nets.unet import abstract_variables

    reference = load_reference_pth(path)
    variables = convert_reference_state(
        reference["network_weights"],
        reference["projection_heads_weights"],
        depth=model.depth,
        norm=model.norm,
        source=str(path),
    )
    expected = abstract_variables(model)
    if not reference["projection_heads_weights"]:
        expected = {**expected, "params": {"unet": expected["params"]["unet"]}}
    check_against(variables, expected, str(path))
    meta = {
        "model": model.architecture(),
        "source": f"converted from reference checkpoint {os.path.basename(path)}",
        "epoch": reference["current_epoch"],
        "orientation": REFERENCE_ORIENTATION,
    }
    return variables, meta
