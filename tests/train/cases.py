"""A tiny preprocessed cache (two views + branch labels) for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from syncas_jax.data.cache import PreprocessedCase, branch_labels, foreground_locations, write_cached_case

TINY = {
    "ngf": 4,
    "depth": 3,
    "patch_size": [16, 32, 32],
    "batch_size": 2,
    "num_anchor": 32,
    "num_iterations_per_epoch": 2,
    "num_val_iterations_per_epoch": 1,
    "num_epochs": 2,
    "workers": 0,
    "augmentated": False,
    "val_fraction": 0.34,
    "initial_lr": 0.01,
}


def write_tiny_cache(folder: Path, cases: int = 3, shape: tuple[int, int, int] = (20, 40, 40)) -> list[str]:
    """Cases with two tubes (two branches) in noise; the tubes are brighter so the task is learnable."""
    ids = []
    for index in range(cases):
        rng = np.random.default_rng(index)
        z, y, x = np.indices(shape)
        mask = ((y - 12 - index) ** 2 + (x - 14) ** 2 <= 6) | (((y - 28) ** 2 + (x - 26) ** 2 <= 4) & (z > 5))
        views = np.stack([rng.normal(0, 0.3, shape) + 1.5 * mask for _ in range(2)]).astype(np.float32)
        label = branch_labels(mask)
        properties = {"original_shape": list(shape), "num_views": 2}
        case_id = f"case{index:02d}"
        write_cached_case(folder, case_id, PreprocessedCase(views, label, foreground_locations(label), properties))
        ids.append(case_id)
    return ids


def write_evaluation_folder(folder: Path, shape: tuple[int, int, int] = (12, 40, 36)) -> None:
    """One "real" scan `{id}.img.nii.gz` (HU) with its coronary mask `{id}.label.nii.gz`."""
    from syncas_jax.common.nifti import volume_from_array, write_volume

    z, y, x = np.indices(shape)
    mask = ((y - 15) ** 2 + (x - 14) ** 2 <= 6).astype(np.uint8)
    hu = np.where(mask > 0, 300.0, 40.0) + np.random.default_rng(0).normal(0, 10, shape)
    like = volume_from_array(hu, (1.0, 1.0, 1.0))
    write_volume(hu, folder / "scan01.img.nii.gz", like)
    write_volume(mask, folder / "scan01.label.nii.gz", like, np.uint8)
