"""The training configuration: one nested, typed object built from flat JSON keys in one place.

A config file is a flat JSON object with the reference's keys (design §5) plus ours. `FLAT_KEYS`
maps every key onto a field of one stage's dataclass:

  model    `syncas_jax.nets.config.ModelConfig`          ngf, depth, norm, head_bias, conv_impl
  loss     `syncas_jax.losses.contrastive.ContrastiveConfig`  num_anchor, ..., contrastive_weight
  data     `syncas_jax.data.config.DataConfig`            data_dir, patch_size, spacing, batch_size, ...
  augment  `syncas_jax.data.augment.AugmentConfig`        on/off (`augmentated`), in the data spacing
  train    `TrainConfig` below                            optimiser, schedule, epochs, run folder

Reference keys that have no meaning here are accepted and reported once as ignored; any other
unknown key, or a value of the wrong type, is an InputError naming the key (and a close match).
`Config.to_flat()` gives the flat dict back (stored in checkpoints; inference reads its spacing and
patch size). Shipped configs (`syncas_jax/configs/*.json`) can be named without a path: `--config demo`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from syncas_jax.common.errors import InputError
from syncas_jax.common.precision import PRECISIONS
from syncas_jax.data.augment import AugmentConfig
from syncas_jax.data.config import DataConfig
from syncas_jax.losses.contrastive import ContrastiveConfig
from syncas_jax.losses.dice_ce import SegmentationLossConfig
from syncas_jax.nets.config import ModelConfig

# Keys of the reference config.json that this implementation does not use.
REFERENCE_IGNORED_KEYS = frozenset(
    {
        "plans_name", "data_preprocessed", "dataset_name", "data_identifier", "exp_results",
        "preprocessor_name", "num_training_samples", "encoder", "score_name", "annotated_classes_key",
        "foreground_labels", "loss_weight", "regression", "max", "mean", "median", "min",
        "percentile_00_5", "percentile_99_5", "std", "initial_patch_size", "transpose_forward",
        "transpose_backward",
    }
)  # fmt: skip


GRAD_CLIP_SCOPES = ("all", "unet")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the run: SGD Nesterov with polynomial decay, epochs, validation, outputs.

    evaluation_folder: real scans `{id}.img.nii.gz` + `{id}.label.nii.gz` segmented and scored every
    `test_every` epochs; precision: see `syncas_jax.common.precision`; init_checkpoint: a checkpoint
    folder or reference `.pth` whose weights (only) the run starts from; freeze_encoder: train the
    decoder and heads only (design §12).
    """

    optimizer: str = "sgd"  # the reference's SGD Nesterov; "adam" converges in fewer steps (the CPU demo)
    initial_lr: float = 1e-3
    weight_decay: float = 3e-5
    momentum: float = 0.99
    grad_clip_norm: float = 12.0
    grad_clip_scope: str = "all"  # "unet": clip the U-Net's gradients only, as the reference
    num_epochs: int = 100
    num_iterations_per_epoch: int = 40
    num_val_iterations_per_epoch: int = 10
    test_every: int = 2
    pseudo_dice_ema: float = 0.9
    seed: int = 0
    precision: str = "auto"
    output_dir: str = "runs/train"
    evaluation_folder: str | None = None
    init_checkpoint: str | None = None  # start from these weights (`train --init`; `train.pretrained`)
    freeze_encoder: bool = False  # stem, encoder levels and bottleneck keep their weights and statistics
    notes: str = ""

    def __post_init__(self) -> None:
        for name in ("num_epochs", "num_iterations_per_epoch", "test_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_val_iterations_per_epoch < 0:
            raise ValueError(f"num_val_iterations_per_epoch must be >= 0, got {self.num_val_iterations_per_epoch}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"'optimizer' must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.grad_clip_scope not in GRAD_CLIP_SCOPES:
            raise ValueError(f"'grad_clip_scope' must be one of {GRAD_CLIP_SCOPES}, got {self.grad_clip_scope!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"'precision' must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch


@dataclass(frozen=True)
class Config:
    """Everything a training run needs, one dataclass per stage. `augment` is None when augmentation is off."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    segmentation: SegmentationLossConfig = field(default_factory=SegmentationLossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def negatives_at(self, epoch: int) -> tuple[int, int]:
        """(negatives, pseudo-negatives) per anchor at `epoch` (0-based)."""
        return self.loss.negatives_at(epoch, self.train.num_epochs)

    def to_flat(self) -> dict[str, Any]:
        """The flat JSON keys of this config (what a config file holds)."""
        flat = {}
        for key, (section, name) in FLAT_KEYS.items():
            value = self.augment is not None if section == "augment" else getattr(getattr(self, section), name)
            flat[key] = list(value) if isinstance(value, tuple) else value
        return flat


# flat key → (section, field); "augmentated" switches the augment section on or off.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("model", name) for name in ("ngf", "depth", "norm", "head_bias", "conv_impl")},
    **{name: ("loss", name) for name in ("num_anchor", "neg_per_anchor", "pseudo_neg_per_anchor", "temperature",
                                         "alpha", "branch_aware", "use_config_alpha_temperature")},
    "contrastive_weight": ("loss", "weight"),
    "ce_foreground_weight": ("segmentation", "ce_foreground_weight"),
    **{name: ("data", name) for name in ("data_dir", "data_weights", "patch_size", "spacing", "batch_size",
                                         "oversample_foreground_percent", "force_foreground", "force_foreground_epochs",
                                         "val_fraction", "val_cases", "workers", "synthesis", "orientation")},
    "augmentated": ("augment", "enabled"),  # the reference's spelling
    **{f.name: ("train", f.name) for f in dataclasses.fields(TrainConfig)},
}  # fmt: skip
# Reference keys with one allowed value (checked, not stored).
FIXED_KEYS = {"pos_per_anchor": (1, "the positive is the same voxel in the other view")}
SECTIONS = {
    "model": ModelConfig,
    "loss": ContrastiveConfig,
    "segmentation": SegmentationLossConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def _annotation(key: str) -> Any:
    section, name = FLAT_KEYS[key]
    if section == "augment":
        return bool
    return typing.get_type_hints(SECTIONS[section])[name]


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check `value` against the annotation; convert lists to tuples and ints to floats/bools where exact."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for alternative in inner:  # e.g. data_dir: one path or a list of paths
            try:
                return _coerce(key, value, alternative, source)
            except InputError as error:
                errors.append(error)
        raise errors[0]
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


def _check_together(config: Config, source: str) -> None:
    """Rules that span sections."""
    multiple = config.model.size_multiple
    if any(size % multiple for size in config.data.patch_size):
        raise InputError(
            source, f"patch_size {list(config.data.patch_size)} must be positive multiples of {multiple} (2**depth)"
        )


def config_from_dict(raw: dict[str, Any], source: str = "config") -> tuple[Config, list[str]]:
    """Build a validated Config from flat keys; returns (config, ignored reference keys)."""
    if not isinstance(raw, dict):
        raise InputError(source, f"config must be a JSON object, got {type(raw).__name__}")
    values: dict[str, dict[str, Any]] = {section: {} for section in (*SECTIONS, "augment")}
    ignored: list[str] = []
    for key, value in raw.items():
        if key in FLAT_KEYS:
            section, name = FLAT_KEYS[key]
            values[section][name] = _coerce(key, value, _annotation(key), source)
        elif key in FIXED_KEYS:
            allowed, why = FIXED_KEYS[key]
            if value != allowed:
                raise InputError(source, f"{key} must be {allowed} ({why})")
        elif key in REFERENCE_IGNORED_KEYS:
            ignored.append(key)
        else:
            known = [*FLAT_KEYS, *FIXED_KEYS, *sorted(REFERENCE_IGNORED_KEYS)]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(source, f"unknown config key '{key}'{hint}")
    try:
        sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
    except ValueError as error:
        raise InputError(source, f"config: {error}") from None
    augment = None
    if values["augment"].get("enabled", True):
        augment = AugmentConfig(spacing=sections["data"].spacing)
    config = Config(augment=augment, **sections)
    _check_together(config, source)
    return config, ignored


def shipped_config_path(name: str) -> Path:
    """The file of a config that ships inside the package (`demo`, `reference`, ...)."""
    return Path(str(resources.files("syncas_jax") / "configs" / f"{name}.json"))


def config_path(name_or_path: str | os.PathLike) -> Path:
    """A config file: an existing file as given, else a bare name of a shipped config, else the path as given."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path
    shipped = shipped_config_path(str(name_or_path))
    return shipped if shipped.is_file() else path


def shipped_configs() -> list[str]:
    """Names of the configs that ship inside the package."""
    folder = resources.files("syncas_jax") / "configs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw flat dict of a config file (path or shipped name); InputError naming the file."""
    path = config_path(path)
    if not path.is_file():
        raise InputError(path, "config file not found" if not path.exists() else "is not a file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(path, f"not valid JSON ({error})") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a text file") from None
    return raw


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> tuple[Config, list[str]]:
    """Read a JSON config file (plus optional flat overrides); see `config_from_dict`."""
    raw = read_config_file(path)
    return config_from_dict({**raw, **(overrides or {})}, str(config_path(path)))


def replace(config: Config, **flat_changes: Any) -> Config:
    """A copy with some flat keys changed, validated again."""
    return config_from_dict({**config.to_flat(), **flat_changes})[0]


__all__ = ["Config", "TrainConfig", "config_from_dict", "load_config", "replace", "REFERENCE_IGNORED_KEYS"]
