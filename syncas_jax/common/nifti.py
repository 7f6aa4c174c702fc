"""NIfTI volumes shared by every stage: read, write, check that two share a grid.

Arrays inside syncas_jax are ordered (z, y, x) = (slice, row, column); NIfTI files
store (x, y, z) = (i, j, k). `read_volume` transposes on the way in and `write_volume`
transposes back, so the file's affine and header are kept untouched.

All writes go to a temporary name in the destination folder and are renamed into
place, so a crash never leaves a half-written output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.common.files import atomic_path


@dataclass(frozen=True)
class Volume:
    """A 3D scan in (z, y, x) order with the geometry of the file it came from.

    array: (Z, Y, X) voxel values (HU for images, integer ids for labels).
    spacing: (z, y, x) voxel size in mm.
    affine: the file's 4x4 voxel-to-world matrix (for (i, j, k) = (x, y, z) indices).
    header: the file's NIfTI header, written back unchanged.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    header: Any
    path: str = ""


NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | os.PathLike, *, dtype: Any = np.float32, allow_nan: bool = False) -> Volume:
    """Read a 3D NIfTI file into (z, y, x) order; raise InputError naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a .nii or .nii.gz file")
    if not str(path).endswith(NIFTI_SUFFIXES):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise InputError(path, f"cannot read NIfTI ({type(error).__name__}: {error})") from None
    if data.ndim > 3 and all(size == 1 for size in data.shape[3:]):
        data = data.reshape(data.shape[:3])  # trailing singleton axes (e.g. x, y, z, 1)
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D image, got {data.ndim}D with shape {tuple(image.shape)}")
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0))).astype(dtype, copy=False)
    if not allow_nan and np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(path, "image contains NaN or infinite values")
    zooms = image.header.get_zooms()[:3]
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return Volume(array=array, spacing=spacing, affine=np.asarray(image.affine), header=image.header, path=str(path))


def check_same_grid(a: Volume, b: Volume) -> None:
    """Raise InputError (naming b) unless a and b share shape and affine."""
    if a.array.shape != b.array.shape:
        raise InputError(b.path, f"shape {b.array.shape} (z, y, x) does not match {a.path} with shape {a.array.shape}")
    if not np.allclose(a.affine, b.affine, atol=1e-3):
        raise InputError(b.path, f"affine does not match {a.path}")


def write_volume(
    array_zyx: np.ndarray,
    path: str | os.PathLike,
    like: Volume,
    dtype: Any = np.int16,
) -> None:
    """Write a (z, y, x) array as NIfTI with the affine and header of `like`, atomically."""
    data = np.transpose(np.asarray(array_zyx), (2, 1, 0))
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    data = data.astype(dtype)
    header = like.header.copy()
    header.set_data_dtype(dtype)
    # Written values are final: no scaling on read-back.
    header["scl_slope"] = 1.0
    header["scl_inter"] = 0.0
    image = nib.Nifti1Image(data, like.affine, header)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))


def volume_from_array(
    array_zyx: np.ndarray, spacing: tuple[float, float, float], affine: np.ndarray | None = None
) -> Volume:
    """Wrap an in-memory (z, y, x) array as a Volume with a fresh NIfTI header."""
    if affine is None:
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    data = np.transpose(np.asarray(array_zyx), (2, 1, 0))
    if data.dtype == bool:
        data = data.astype(np.uint8)  # NIfTI has no boolean type
    header = nib.Nifti1Image(data, affine).header
    header.set_zooms((spacing[2], spacing[1], spacing[0]))
    return Volume(array=np.asarray(array_zyx), spacing=tuple(float(s) for s in spacing), affine=affine, header=header)
