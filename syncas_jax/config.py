"""Training configuration: one typed dataclass, loaded from JSON and validated in one place.

Accepts every key of the reference's `config.json` (SPEC §5). Reference keys that have
no meaning here are accepted and reported once as ignored; any other unknown key, or a
value of the wrong type, is an InputError naming the key (and a close match).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncas_jax.io import InputError

# Keys of the reference config.json that this implementation does not use.
REFERENCE_IGNORED_KEYS = frozenset(
    {
        "plans_name",
        "data_preprocessed",
        "dataset_name",
        "data_identifier",
        "exp_results",
        "preprocessor_name",
        "num_training_samples",
        "encoder",
        "score_name",
        "annotated_classes_key",
        "foreground_labels",
        "loss_weight",
        "regression",
        "max",
        "mean",
        "median",
        "min",
        "percentile_00_5",
        "percentile_99_5",
        "std",
        "initial_patch_size",
        "transpose_forward",
        "transpose_backward",
    }
)

PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Reference keys keep the reference's names and defaults."""

    # --- reference keys (SPEC §5)
    num_anchor: int = 512
    pos_per_anchor: int = 1
    neg_per_anchor: int = 5
    pseudo_neg_per_anchor: int = 1
    temperature: float = 0.3
    alpha: float = 0.5
    branch_aware: bool = True
    batch_size: int = 4
    initial_lr: float = 1e-3
    weight_decay: float = 3e-5
    oversample_foreground_percent: float = 0.33
    num_iterations_per_epoch: int = 40
    num_val_iterations_per_epoch: int = 10
    num_epochs: int = 100
    test_every: int = 2
    patch_size: tuple[int, int, int] = (32, 224, 224)
    spacing: tuple[float, float, float] = (3.0, 0.349609375, 0.349609375)
    augmentated: bool = True  # the reference's spelling: data augmentation on/off
    evaluation_folder: str | None = None  # {id}.img.nii.gz + {id}.label.nii.gz, run every test_every epochs

    # --- ours
    data_dir: str = "cache"  # preprocessed cache (python -m syncas_jax.preprocess)
    output_dir: str = "runs/train"  # checkpoints, metrics.jsonl, progress.png
    val_fraction: float = 0.2
    val_cases: tuple[str, ...] | None = None  # explicit validation case ids (overrides val_fraction)
    seed: int = 0
    precision: str = "auto"  # auto = bfloat16 compute on GPU/TPU, float32 on CPU
    ngf: int = 16
    depth: int = 4
    norm: str = "batch"
    head_bias: bool = False  # True adds a bias to the logits conv (not the reference layout; see nets/unet.py)
    conv_impl: str = "auto"  # auto = 2-D conv formulation on CPU, XLA's 3-D conv on GPU/TPU (nets/unet.py)
    momentum: float = 0.99
    grad_clip_norm: float = 12.0
    contrastive_weight: float = 0.1
    pseudo_dice_ema: float = 0.9
    workers: int = 2
    notes: str = ""

    def negatives_at(self, epoch: int) -> tuple[int, int]:
        """(negatives, pseudo-negatives) per anchor: doubled from half the epochs on."""
        factor = 2 if epoch >= self.num_epochs // 2 else 1
        return self.neg_per_anchor * factor, self.pseudo_neg_per_anchor * factor

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check `value` against the annotation; convert lists to tuples and ints to floats/bools where exact."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"config key '{key}' must be a list, got {type(value).__name__}")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(key, v, args[0], source) for v in value)
        if len(value) != len(args):
            raise InputError(source, f"config key '{key}' must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(key, v, a, source) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise InputError(source, f"config key '{key}' must be true/false (or 0/1), got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(source, f"config key '{key}' must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(source, f"config key '{key}' must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise InputError(source, f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported annotation {annotation} for {key}")


def validate(config: TrainConfig, source: str = "config") -> TrainConfig:
    """Cross-field checks; raise InputError naming the key."""
    multiple = 2**config.depth
    if any(size <= 0 or size % multiple for size in config.patch_size):
        raise InputError(source, f"patch_size {list(config.patch_size)} must be positive multiples of {multiple}")
    if config.pos_per_anchor != 1:
        raise InputError(source, "pos_per_anchor must be 1 (the positive is the same voxel in the other view)")
    positive_ints = ("num_anchor", "batch_size", "num_iterations_per_epoch", "num_epochs", "test_every", "ngf")
    for key in positive_ints:
        if getattr(config, key) < 1:
            raise InputError(source, f"config key '{key}' must be >= 1, got {getattr(config, key)}")
    for key in ("neg_per_anchor", "pseudo_neg_per_anchor", "num_val_iterations_per_epoch", "workers"):
        if getattr(config, key) < 0:
            raise InputError(source, f"config key '{key}' must be >= 0, got {getattr(config, key)}")
    if config.temperature <= 0:
        raise InputError(source, f"config key 'temperature' must be > 0, got {config.temperature}")
    if not 0 <= config.oversample_foreground_percent <= 1:
        raise InputError(source, "config key 'oversample_foreground_percent' must be in [0, 1]")
    if not 0 <= config.val_fraction < 1:
        raise InputError(source, "config key 'val_fraction' must be in [0, 1)")
    if config.precision not in PRECISIONS:
        raise InputError(source, f"config key 'precision' must be one of {PRECISIONS}, got {config.precision!r}")
    from syncas_jax.nets.unet import CONV_IMPLS  # imports jax/flax, so only when validating

    if config.conv_impl not in CONV_IMPLS:
        raise InputError(source, f"config key 'conv_impl' must be one of {CONV_IMPLS}, got {config.conv_impl!r}")
    if config.norm not in ("batch", "instance"):
        raise InputError(source, f"config key 'norm' must be 'batch' or 'instance', got {config.norm!r}")
    if any(s <= 0 for s in config.spacing):
        raise InputError(source, f"config key 'spacing' must be positive, got {list(config.spacing)}")
    return config


def config_from_dict(raw: dict[str, Any], source: str = "config") -> tuple[TrainConfig, list[str]]:
    """Build a validated TrainConfig; returns (config, ignored reference keys)."""
    if not isinstance(raw, dict):
        raise InputError(source, f"config must be a JSON object, got {type(raw).__name__}")
    types = _field_types()
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        if key in types:
            values[key] = _coerce(key, value, types[key], source)
        elif key in REFERENCE_IGNORED_KEYS:
            ignored.append(key)
        else:
            close = difflib.get_close_matches(key, list(types) + sorted(REFERENCE_IGNORED_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(source, f"unknown config key '{key}'{hint}")
    return validate(TrainConfig(**values), source), ignored


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, list[str]]:
    """Read a JSON config file (plus optional overrides); see `config_from_dict`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found" if not path.exists() else "is not a file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(path, f"not valid JSON ({error})") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a text file") from None
    if overrides:
        raw = {**raw, **overrides}
    return config_from_dict(raw, str(path))


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    return validate(dataclasses.replace(config, **changes))


__all__ = ["TrainConfig", "config_from_dict", "load_config", "replace", "REFERENCE_IGNORED_KEYS"]
