"""Constants and file layout shared by preprocessing, the loader and augmentation (no heavy imports).

Cache layout (CACHE_DIR), per case ``{id}``:
``{id}.views.npy``  float32 (V, Z, Y, X) windowed, normalised, resampled views;
``{id}.label.npy``  int16 (Z, Y, X) branch labels (0 background, 1 = largest branch, …);
``{id}.fg.npy``     int32 (M, 3) foreground voxel (z, y, x) indices, M ≤ 20,000;
``{id}.json``       properties (written last: its presence marks the case done);
plus ``dataset.json`` (kind "ncct", spacing, cases, number of views, patch-size hint).

CTA cache (``python -m syncas_jax.preprocess --cta``, for online synthesis; `syncas_jax.data.cta_cache`):
``{id}.hu.npy``         int16 (Z, Y, X) CTA HU, cropped and resampled;
``{id}.organs.npy``     uint8 (Z, Y, X) label map (TotalSegmentator ids, coronary 128);
``{id}.label.npy``, ``{id}.fg.npy`` as above;
``{id}.sinogram.npy``   float32 (Z, A, S) per slice, line integrals of its realistic render;
``{id}.photons.npy``    float32 (Z,) photon-count factor per slice;
``{id}.centreline.npy`` float32 (N, 7) plaque sites (mm in the cached grid, radius, tangent);
``{id}.json`` written last; ``dataset.json`` with kind "cta".
"""

from __future__ import annotations

import os
from pathlib import Path

TARGET_SPACING: tuple[float, float, float] = (3.0, 0.349609375, 0.349609375)  # (z, y, x) mm
PATCH_SIZE: tuple[int, int, int] = (32, 224, 224)  # (z, y, x) voxels
IMAGE_PAD = 0.0  # view value outside the volume
LABEL_PAD = -1  # label outside the volume: ignored by the contrastive loss, background for the target
CACHE_FORMAT = 1
CACHE_KINDS = ("ncct", "cta")  # rendered views (offline synthesis) / CTA + labels (online synthesis)
_ARRAYS = {
    "ncct": ("views", "label", "fg"),
    "cta": ("hu", "organs", "label", "fg", "sinogram", "photons", "centreline"),
}


def cache_paths(cache_dir: str | os.PathLike, case_id: str, kind: str = "ncct") -> dict[str, Path]:
    """Paths of one cached case: its arrays (.npy, see above) and properties (.json), for a cache `kind`."""
    base = Path(cache_dir)
    paths = {name: base / f"{case_id}.{name}.npy" for name in _ARRAYS[kind]}
    return {**paths, "properties": base / f"{case_id}.json"}
