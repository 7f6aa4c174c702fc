"""The network's settings as one typed object: what checkpoints store and every stage builds from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NORMS = ("batch", "instance")
# How the 3×3×3 convolutions are computed (nets/unet.py); parameters do not depend on it.
CONV_IMPLS = ("auto", "xla", "conv2d")
# The fields that fix the parameter tree; checkpoints store these as meta["model"].
ARCHITECTURE_FIELDS = ("ngf", "depth", "norm", "head_bias")


@dataclass(frozen=True)
class ModelConfig:
    """SynCAS U-Net + projection heads (design §3). Defaults are the reference network.

    ngf: channels of the first level (doubling per level); depth: encoder levels (≥ 3 for the
    four contrastive taps); norm: "batch" or "instance"; head_bias: a bias on the logits conv
    (ours, off in the reference; see `UNet3D.head_bias`); conv_impl: see `CONV_IMPLS`.
    """

    ngf: int = 16
    depth: int = 4
    norm: str = "batch"
    head_bias: bool = False
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        if self.ngf < 1:
            raise ValueError(f"ngf must be >= 1, got {self.ngf}")
        if self.depth < 3:
            raise ValueError(f"depth must be >= 3 for the four contrastive taps, got {self.depth}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of this (2**depth)."""
        return 2**self.depth

    def architecture(self) -> dict[str, Any]:
        """{ngf, depth, norm, head_bias}: what a checkpoint's meta["model"] holds."""
        return {key: value for key, value in asdict(self).items() if key in ARCHITECTURE_FIELDS}

    @classmethod
    def from_architecture(cls, model: dict[str, Any], **runtime: Any) -> ModelConfig:
        """From checkpoint metadata (reference defaults where a key is absent); raises ValueError."""
        if not isinstance(model, dict):
            raise ValueError(f"expected a dict of {ARCHITECTURE_FIELDS}, got {type(model).__name__}")
        try:
            values = {
                "ngf": int(model.get("ngf", 16)),
                "depth": int(model.get("depth", 4)),
                "norm": str(model.get("norm", "batch")),
                "head_bias": bool(model.get("head_bias", False)),
            }
        except (TypeError, ValueError):
            raise ValueError(f"invalid model entry {model}") from None
        return cls(**values, **runtime)

    def module_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the Flax modules (`SynCASNet(**model.module_kwargs(), dtype=...)`)."""
        return asdict(self)
