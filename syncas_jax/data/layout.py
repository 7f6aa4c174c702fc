"""Constants and file layout shared by preprocessing, the loader and augmentation (no heavy imports).

Cache layout (CACHE_DIR), per case ``{id}``:
``{id}.views.npy``  float32 (V, Z, Y, X) windowed, normalised, resampled views;
``{id}.label.npy``  int16 (Z, Y, X) branch labels (0 background, 1 = largest branch, …);
``{id}.fg.npy``     int32 (M, 3) foreground voxel (z, y, x) indices, M ≤ 20,000;
``{id}.json``       properties (written last: its presence marks the case done);
plus ``dataset.json`` (spacing, cases, number of views, patch-size hint).
"""

from __future__ import annotations

import os
from pathlib import Path

TARGET_SPACING: tuple[float, float, float] = (3.0, 0.349609375, 0.349609375)  # (z, y, x) mm
PATCH_SIZE: tuple[int, int, int] = (32, 224, 224)  # (z, y, x) voxels
IMAGE_PAD = 0.0  # view value outside the volume
LABEL_PAD = -1  # label outside the volume: ignored by the contrastive loss, background for the target
CACHE_FORMAT = 1


def cache_paths(cache_dir: str | os.PathLike, case_id: str) -> dict[str, Path]:
    """Paths of one cached case: views, label, fg (.npy) and properties (.json)."""
    base = Path(cache_dir)
    return {
        "views": base / f"{case_id}.views.npy",
        "label": base / f"{case_id}.label.npy",
        "fg": base / f"{case_id}.fg.npy",
        "properties": base / f"{case_id}.json",
    }
