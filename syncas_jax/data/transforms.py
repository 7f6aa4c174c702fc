"""Array transforms of preprocessing (nnU-Net's order): crop to the nonzero region → CT window → resample.

* Crop: mask of raw HU ≠ 0 in any view, holes filled (fill_voids), bounding box.
  An all-zero image keeps its whole extent.
* Window: clip HU to [-150, 250], subtract 50, divide by 200 → values in [-1, 1].
* Resampling (nnU-Net v2's rule, ``resample_data_or_seg_to_shape``): new shape =
  round(shape · old spacing / new spacing). If the old spacing, else the new one, is
  anisotropic (max/min > 3) with a single coarsest axis, that axis is resampled
  separately: each slice in-plane first (images: third-order spline, labels:
  per-label linear ≥ 0.5), then along the coarse axis with order 0 (nearest).
  Otherwise one 3D resize (images order 3, labels per-label linear). All resizes use
  pixel-centre alignment and edge extension, i.e. ``skimage.transform.resize``
  (``scipy.ndimage.zoom(grid_mode=True, mode="nearest")``).

`preprocess_hu` chains the three and records the properties that `restore_to_original`
needs to undo them: ``original_shape`` (z, y, x), ``original_spacing`` (mm),
``crop_bbox`` [[z0, z1], [y0, y1], [x0, x1]] (half-open, in the original grid),
``shape_after_crop``, ``target_spacing``, ``shape_after_resample``, ``separate_axis``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fill_voids
import numpy as np
from scipy import ndimage as ndi

HU_CLIP: tuple[float, float] = (-150.0, 250.0)
HU_CENTER = 50.0
HU_SCALE = 200.0
ANISOTROPY_THRESHOLD = 3.0


# --------------------------------------------------------------------------- intensity


def window_ct(hu: Any) -> Any:
    """(hu.clip(-150, 250) - 50) / 200 of a numpy or JAX float array (online synthesis windows on device)."""
    return (hu.clip(*HU_CLIP) - HU_CENTER) / HU_SCALE


def normalize_ct(hu: np.ndarray) -> np.ndarray:
    """HU → float32 (hu.clip(-150, 250) - 50) / 200, values in [-1, 1]."""
    return window_ct(np.asarray(hu, dtype=np.float32)).astype(np.float32)


# -------------------------------------------------------------------------------- crop


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Bool (Z, Y, X) mask of voxels ≠ 0 in any channel of (C, Z, Y, X) or (Z, Y, X) data, holes filled."""
    data = np.asarray(data)
    mask = np.any(data != 0, axis=0) if data.ndim == 4 else data != 0
    return fill_voids.fill(mask, in_place=False)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """Half-open [[lo, hi], …] per axis of the True voxels; the whole extent when mask is empty."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, int(mask.shape[axis])])
    return box


def crop_to_nonzero(
    data: np.ndarray, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[list[int]]]:
    """Crop (C, Z, Y, X) data (and a (Z, Y, X) label) to the box of `nonzero_mask(data)`.

    Returns (cropped data, cropped label or None, box [[z0, z1], [y0, y1], [x0, x1]]).
    """
    box = bounding_box(nonzero_mask(data))
    region = tuple(slice(lo, hi) for lo, hi in box)
    cropped = np.ascontiguousarray(data[(Ellipsis, *region)])
    cropped_label = None if label is None else np.ascontiguousarray(label[region])
    return cropped, cropped_label, box


# -------------------------------------------------------------------------- resampling


def compute_new_shape(
    shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """nnU-Net: round(shape · old_spacing / new_spacing) per axis (voxels)."""
    ratio = np.asarray(old_spacing, dtype=float) / np.asarray(new_spacing, dtype=float)
    return tuple(int(n) for n in np.round(np.asarray(shape) * ratio).astype(int))


def separate_axis(
    old_spacing: Sequence[float], new_spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD
) -> int | None:
    """The axis nnU-Net resamples on its own (order 0), or None for one 3D resize.

    Anisotropic = max(spacing)/min(spacing) > threshold; the old spacing is checked
    first, then the new one; only a single coarsest axis qualifies.
    """
    for spacing in (np.asarray(old_spacing, float), np.asarray(new_spacing, float)):
        if spacing.max() / spacing.min() > threshold:
            coarse = np.flatnonzero(spacing.max() / spacing == 1)
            return int(coarse[0]) if coarse.size == 1 else None
    return None


def _resize(array: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """skimage.transform.resize(mode="edge", anti_aliasing=False) via scipy: pixel-centre aligned zoom."""
    new_shape = tuple(int(n) for n in new_shape)
    if array.shape == new_shape:
        return array.copy()
    factors = np.asarray(new_shape, float) / np.asarray(array.shape, float)
    out = ndi.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    assert out.shape == new_shape, (out.shape, new_shape)
    return out


def _resize_label(label: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """nnU-Net's resize_segmentation: nearest for order 0, else per-label resize of the one-hot mask ≥ 0.5."""
    if order == 0 or label.shape == tuple(new_shape):
        return _resize(label, new_shape, 0)
    out = np.zeros(tuple(new_shape), dtype=label.dtype)
    for value in np.unique(label):
        out[_resize((label == value).astype(np.float32), new_shape, order) >= 0.5] = value
    return out


def _resample_channel(
    array: np.ndarray, new_shape: tuple[int, ...], axis: int | None, is_label: bool, order: int, order_z: int
) -> np.ndarray:
    resize = _resize_label if is_label else _resize
    if axis is None:
        return resize(array, new_shape, order)
    moved = np.moveaxis(array, axis, 0)
    plane_shape = tuple(n for a, n in enumerate(new_shape) if a != axis)
    if order_z == 0 and new_shape[axis] < moved.shape[0]:
        # Nearest along the coarse axis only picks slices, so picking them first gives the same
        # result with fewer planes to resize (275 → 46 on a 0.5 mm scan at 3 mm).
        moved = _resize(moved, (new_shape[axis], *moved.shape[1:]), 0)
    planes = np.stack([resize(plane, plane_shape, order) for plane in moved])
    along = (new_shape[axis], *plane_shape)
    if planes.shape[0] != along[0]:
        # Factor 1 in-plane keeps the slices exact; only the coarse axis is interpolated.
        planes = resize(planes, along, order_z)
    return np.moveaxis(planes, 0, axis)


def resample(
    array: np.ndarray,
    new_shape: Sequence[int],
    old_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    is_label: bool = False,
    order: int | None = None,
    order_z: int = 0,
) -> np.ndarray:
    """Resample (Z, Y, X) or (C, Z, Y, X) `array` to spatial `new_shape` with nnU-Net's rule.

    old_spacing/new_spacing: (z, y, x) mm, used only to decide the separate-axis rule.
    order: in-plane (or 3D) order; default 3 for images, 1 (per-label linear) for labels.
    order_z: order along the separately resampled coarse axis (nnU-Net: 0).
    """
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected (Z, Y, X) or (C, Z, Y, X), got shape {array.shape}")
    new_shape = tuple(int(n) for n in new_shape)
    if order is None:
        order = 1 if is_label else 3
    if not is_label and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    axis = separate_axis(old_spacing, new_spacing)
    channels = array if array.ndim == 4 else array[None]
    out = np.stack([_resample_channel(c, new_shape, axis, is_label, order, order_z) for c in channels])
    return out if array.ndim == 4 else out[0]


# -------------------------------------------------------------------- the chain and its inverse


def preprocess_hu(
    hu: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float], mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(C, Z, Y, X) HU [+ (Z, Y, X) mask] → cropped, windowed, resampled (C, Z', Y', X') float32 [+ uint8 mask]."""
    cropped, cropped_mask, box = crop_to_nonzero(hu, mask)
    new_shape = compute_new_shape(cropped.shape[1:], spacing, target_spacing)
    data = resample(normalize_ct(cropped), new_shape, spacing, target_spacing).astype(np.float32)
    if cropped_mask is not None:
        cropped_mask = resample((cropped_mask > 0).astype(np.uint8), new_shape, spacing, target_spacing, is_label=True)
    properties = resampling_properties(hu.shape[1:], spacing, box, cropped.shape[1:], target_spacing, new_shape)
    return data, cropped_mask, properties


def resampling_properties(
    original_shape: Sequence[int],
    spacing: Sequence[float],
    box: list[list[int]],
    cropped_shape: Sequence[int],
    target_spacing: Sequence[float],
    new_shape: Sequence[int],
) -> dict[str, Any]:
    """What `restore_to_original` needs to undo a crop to `box` and a resampling to `new_shape`."""
    return {
        "axis_order": "zyx",
        "original_shape": [int(n) for n in original_shape],
        "original_spacing": [float(s) for s in spacing],
        "crop_bbox": box,
        "shape_after_crop": [int(n) for n in cropped_shape],
        "target_spacing": [float(s) for s in target_spacing],
        "shape_after_resample": [int(n) for n in new_shape],
        "separate_axis": separate_axis(spacing, target_spacing),
    }


def restore_to_original(
    array: np.ndarray,
    properties: dict[str, Any],
    is_label: bool,
    *,
    order: int | None = None,
    outside: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Undo resampling and cropping: (Z', Y', X') or (C, Z', Y', X') → the original (z, y, x) grid.

    Labels use nearest neighbour (order 0: ids stay exact); float maps use order 1
    (nnU-Net's export of probabilities), both with order 0 along a separate coarse axis.
    Outside the crop box: 0, except channel 0 of a (C, …) float map, which is 1
    (background of a softmax map, as nnU-Net). `outside` overrides (scalar or per channel).
    Write with ``write_volume(result, path, like=the input volume)`` to restore the file's axes.
    """
    array = np.asarray(array)
    expected = tuple(properties["shape_after_resample"])
    if array.shape[-3:] != expected:
        raise ValueError(f"array spatial shape {array.shape[-3:]} does not match preprocessed shape {expected}")
    restored = resample(
        array,
        properties["shape_after_crop"],
        properties["target_spacing"],
        properties["original_spacing"],
        is_label=is_label,
        order=(0 if is_label else 1) if order is None else order,
    )
    lead = array.shape[:-3]
    if outside is None:
        outside = [1.0] + [0.0] * (lead[0] - 1) if lead and not is_label else 0
    out = np.empty(lead + tuple(properties["original_shape"]), dtype=restored.dtype)
    out[...] = np.reshape(outside, np.shape(outside) + (1, 1, 1)) if np.ndim(outside) else outside
    region = tuple(slice(lo, hi) for lo, hi in properties["crop_bbox"])
    out[(Ellipsis, *region)] = restored
    return out
