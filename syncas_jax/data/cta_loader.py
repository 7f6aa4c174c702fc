"""Loader pieces for the CTA cache (online synthesis): a grain source and a batcher of CTA crops.

Patches are planned exactly as for the NCCT cache (`loader.PatchPlanner`: nnU-Net placement,
foreground oversampling), and the training stream, its sharding and its state are
`loader.make_train_loader`'s. What differs is what an item carries (`synth.online.CtaCrop`):
the patch widened in-plane by `margin` pixels a side (CTA HU, label map), the patch's branch
labels, the whole-slice sinograms and photon factors of its slices and the case's plaque sites.
Batches (B items) are dicts of numpy arrays:

  hu int16 (B, Zp, Yp+2m, Xp+2m) (0 outside the volume), organs uint8 (same, 0 outside),
  label int16 (B, Zp, Yp, Xp) (-1 outside), sinogram float32 (B, Zp, A, S) (S: the cache's
  largest detector, each slice's detector centred at S//2; 0 outside), photons float32 (B, Zp)
  (1 outside), centre_offset int32 (B, 2), origin_mm float32 (B, 3), centreline float32 (B, N, 7)
  (zero rows after centreline_count), centreline_count int32 (B,).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.data.cache import read_dataset_info
from syncas_jax.data.layout import LABEL_PAD, cache_paths
from syncas_jax.data.loader import PatchBatcher, open_cached, window_slices
from syncas_jax.synth.online import CROP_MARGIN

KIND = "cta"
ARRAYS = ("hu", "organs", "label", "fg", "sinogram", "photons", "centreline")


@dataclass(frozen=True)
class CtaGeometry:
    """Static shapes of a CTA cache's batches (from dataset.json): spacing (z, y, x) mm, the largest
    detector S, the most centreline points N, the largest lumen radius (mm), the HU table's name."""

    spacing: tuple[float, float, float]
    detector_bins: int
    centreline_points: int
    max_lumen_radius_mm: float
    hu_table: str


def read_cta_geometry(cache_dir: str | os.PathLike) -> CtaGeometry:
    """The CTA cache's `CtaGeometry`; InputError naming the cache when it is not a CTA cache."""
    info = read_dataset_info(cache_dir)
    if info.get("kind", "ncct") != KIND:
        raise InputError(cache_dir, "not a CTA cache (build one with python -m syncas_jax.preprocess --cta)")
    return CtaGeometry(
        tuple(float(s) for s in info["spacing"]),
        int(info["detector_bins"]),
        max(int(info["centreline_points"]), 1),
        float(info["max_lumen_radius_mm"]),
        str(info["hu_table"]),
    )


class CtaSource:
    """grain random-access source: item i = memory maps of CTA case `case_ids[i]` (nothing read yet)."""

    def __init__(self, cache_dir: str | os.PathLike, case_ids: Sequence[str]):
        if not case_ids:
            raise InputError(cache_dir, "no cases selected for the loader")
        self.cache_dir = str(cache_dir)
        self.case_ids = [str(c) for c in case_ids]
        for case_id in self.case_ids:
            for path in cache_paths(cache_dir, case_id, KIND).values():
                if not path.exists():
                    raise InputError(path, f"missing from the CTA cache (case {case_id} not preprocessed)")

    def _open(self, case_id: str, name: str) -> np.ndarray:
        return open_cached(cache_paths(self.cache_dir, case_id, KIND)[name])

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self.case_ids[index]
        return {name: self._open(case_id, name) for name in ARRAYS}

    def __repr__(self) -> str:
        return f"CtaSource({self.cache_dir!r}, {len(self.case_ids)} cases)"


class CtaPatchBatcher(PatchBatcher):
    """grain batch_fn: the CTA crops of planned patches (module docstring), copied into the batch arrays."""

    def __init__(self, patch_size: Sequence[int], geometry: CtaGeometry, margin: int = CROP_MARGIN):
        super().__init__(patch_size)
        self.geometry = geometry
        self.margin = int(margin)

    def __call__(self, groups: Sequence[Sequence[dict[str, Any]]]) -> dict[str, np.ndarray]:
        """One batch from planned items, given as groups (`ShardBatches` elements) laid end to end."""
        items = [item for group in groups for item in group]
        zp, yp, xp = self.patch_size
        m, g = self.margin, self.geometry
        crop = (zp, yp + 2 * m, xp + 2 * m)
        b = len(items)
        n_angles = items[0]["sinogram"].shape[1]
        out = {
            "hu": self._empty((b, *crop), np.int16),
            "organs": self._empty((b, *crop), np.uint8),
            "label": self._empty((b, *self.patch_size), np.int16),
            "sinogram": self._empty((b, zp, n_angles, g.detector_bins), np.float32),
            "photons": self._empty((b, zp), np.float32),
            "centre_offset": self._empty((b, 2), np.int32),
            "origin_mm": self._empty((b, 3), np.float32),
            "centreline": self._empty((b, g.centreline_points, 7), np.float32),
            "centreline_count": self._empty((b,), np.int32),
        }
        for i, item in enumerate(items):
            self._fill(item, i, out)
        return out

    def _fill(self, item: dict[str, Any], i: int, out: dict[str, np.ndarray]) -> None:
        m = self.margin
        origin = np.asarray(item["origin"], np.int64)
        shape = item["label"].shape
        crop_origin = origin - np.array([0, m, m])
        src, dst, _ = window_slices(crop_origin, out["hu"].shape[1:], shape)
        for name in ("hu", "organs"):
            out[name][i] = 0
            out[name][i][dst] = item[name][src]
        src, dst, _ = window_slices(origin, self.patch_size, shape)
        out["label"][i] = LABEL_PAD
        out["label"][i][dst] = item["label"][src]

        z_src, z_dst = src[0], dst[0]
        sinogram = item["sinogram"]
        bins = sinogram.shape[2]
        start = self.geometry.detector_bins // 2 - bins // 2
        out["sinogram"][i] = 0.0
        out["sinogram"][i, z_dst, :, start : start + bins] = sinogram[z_src]
        out["photons"][i] = 1.0
        out["photons"][i, z_dst] = item["photons"][z_src]
        centre = crop_origin[1:] + np.array(out["hu"].shape[2:]) // 2 - np.array(shape[1:]) // 2
        out["centre_offset"][i] = centre
        out["origin_mm"][i] = origin * np.asarray(self.geometry.spacing)
        table = item["centreline"]
        out["centreline"][i] = 0.0
        out["centreline"][i, : len(table)] = table
        out["centreline_count"][i] = len(table)


def cta_loader_parts(
    cache_dir: str | os.PathLike, case_ids: Sequence[str], patch_size: Sequence[int], margin: int = CROP_MARGIN
) -> tuple[CtaSource, CtaPatchBatcher, CtaGeometry]:
    """(source, batch_fn) for `loader.make_train_loader` / `make_val_loader` on a CTA cache, and its geometry."""
    geometry = read_cta_geometry(cache_dir)
    return CtaSource(cache_dir, case_ids), CtaPatchBatcher(patch_size, geometry, margin), geometry
