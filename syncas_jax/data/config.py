"""What the training data stage needs: where the cache is, patch and batch shapes, sampling, the split."""

from __future__ import annotations

from dataclasses import dataclass

from syncas_jax.data.layout import PATCH_SIZE, TARGET_SPACING
from syncas_jax.data.orientation import ORIENTATIONS

SYNTHESIS = ("offline", "online")


@dataclass(frozen=True)
class DataConfig:
    """data_dir: preprocessed cache (`python -m syncas_jax.preprocess`), or several (a list): training then
    draws each patch's cache by `data_weights` (default equal), and validation comes from the first;
    data_weights: one positive sampling weight per cache of data_dir; patch_size (z, y, x) voxels;
    spacing (z, y, x) mm of the cache (also the frame in which augmentation rotates and scales);
    batch_size: global batch (all devices); oversample_foreground_percent: chance that a patch is
    centred on a coronary voxel; force_foreground: every patch is (the reference's loader hard-codes
    force_fg = True, so its oversample_foreground_percent never acts); force_foreground_epochs: every
    patch is centred on a coronary for the first that many epochs, then oversample_foreground_percent
    acts (the network finds the vessels first, then meets the rest of the body); val_fraction / val_cases: the
    validation split; workers: grain worker processes (0 = in the training process); synthesis:
    "offline" trains on the views of an NCCT cache, "online" renders two new views of every patch
    inside the train step from a CTA cache (`python -m syncas_jax.preprocess --cta`; `data.online`);
    orientation: "canonical" (every scan turned to LPS first, design §11) or "file" (the file's own axes,
    as the reference; `train --keep-orientation`): the caches' and the evaluation folder's, recorded in
    checkpoints so that inference does the same."""

    data_dir: str | tuple[str, ...] = "cache"
    data_weights: tuple[float, ...] | None = None
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
    orientation: str = "canonical"

    def __post_init__(self) -> None:
        if not self.caches:
            raise ValueError("data_dir must name at least one cache")
        if self.data_weights is not None:
            if len(self.data_weights) != len(self.caches):
                raise ValueError(f"data_weights has {len(self.data_weights)} entries for {len(self.caches)} caches")
            if min(self.data_weights) <= 0:
                raise ValueError(f"data_weights must be positive, got {list(self.data_weights)}")
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
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.synthesis not in SYNTHESIS:
            raise ValueError(f"synthesis must be one of {SYNTHESIS}, got {self.synthesis!r}")

    @property
    def caches(self) -> tuple[str, ...]:
        """The cache folders of data_dir (one or several); the first holds the validation cases."""
        return (self.data_dir,) if isinstance(self.data_dir, str) else tuple(self.data_dir)

    @property
    def cache_weights(self) -> tuple[float, ...]:
        """Sampling weight of each cache, summing to 1."""
        weights = self.data_weights or (1.0,) * len(self.caches)
        return tuple(w / sum(weights) for w in weights)

    @property
    def foreground_probability(self) -> float:
        """Chance that a patch is centred on a coronary voxel."""
        return 1.0 if self.force_foreground else self.oversample_foreground_percent
