"""What the training data stage needs: where the cache is, patch and batch shapes, sampling, the split."""

from __future__ import annotations

from dataclasses import dataclass

from syncas_jax.data.layout import PATCH_SIZE, TARGET_SPACING

SYNTHESIS = ("offline", "online")


@dataclass(frozen=True)
class DataConfig:
    """data_dir: preprocessed cache (`python -m syncas_jax.preprocess`); patch_size (z, y, x) voxels;
    spacing (z, y, x) mm of the cache (also the frame in which augmentation rotates and scales);
    batch_size: global batch (all devices); oversample_foreground_percent: chance that a patch is
    centred on a coronary voxel; force_foreground: every patch is (the reference's loader hard-codes
    force_fg = True, so its oversample_foreground_percent never acts); force_foreground_epochs: every
    patch is centred on a coronary for the first that many epochs, then oversample_foreground_percent
    acts (the network finds the vessels first, then meets the rest of the body); val_fraction / val_cases: the
    validation split; workers: grain worker processes (0 = in the training process); synthesis:
    "offline" trains on the views of an NCCT cache, "online" renders two new views of every patch
    inside the train step from a CTA cache (`python -m syncas_jax.preprocess --cta`; `data.online`)."""

    data_dir: str = "cache"
    patch_size: tuple[int, int, int] = PATCH_SIZE
    spacing: tuple[float, float, float] = TARGET_SPACING
    batch_size: int = 4
    oversample_foreground_percent: float = 0.33
    force_foreground: bool = False
    force_foreground_epochs: int = 0
    val_fraction: float = 0.2
    val_cases: tuple[str, ...] | None = None
    workers: int = 2
    synthesis: str = "offline"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be positive, got {list(self.patch_size)}")
        if any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {list(self.spacing)}")
        if not 0 <= self.oversample_foreground_percent <= 1:
            raise ValueError("oversample_foreground_percent must be in [0, 1]")
        if self.force_foreground_epochs < 0:
            raise ValueError(f"force_foreground_epochs must be >= 0, got {self.force_foreground_epochs}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.synthesis not in SYNTHESIS:
            raise ValueError(f"synthesis must be one of {SYNTHESIS}, got {self.synthesis!r}")

    @property
    def foreground_probability(self) -> float:
        """Chance that a patch is centred on a coronary voxel."""
        return 1.0 if self.force_foreground else self.oversample_foreground_percent
