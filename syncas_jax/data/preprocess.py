"""nnU-Net-style preprocessing of SynCAS cases, and its inverse for inference.

Steps, in nnU-Net's order: read (z, y, x) arrays → crop to the nonzero region →
CT window → resample to the target spacing → branch labels.

* Axis order: `syncas_jax.io.read_volume` transposes the file's (i, j, k) = (x, y, z)
  storage to (z, y, x) = (slice, row, column); no reorientation to a canonical
  frame is done (nnU-Net's ``transpose_forward`` = [0, 1, 2]). Properties record
  ``axis_order = "zyx"`` and the file's affine, so outputs are written back with
  ``io.write_volume(array_zyx, path, like=input_volume)``.
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
* Branch labels: 6-connected components of the coronary mask (label > 0, after
  resampling), renumbered by size: largest = 1, next = 2, …, background 0; ties are
  broken by the first voxel in C (z, y, x) order. int16.

Input layout (output of ``syncas_jax.synth``) for case ``{id}``:
``{id}.view{k}.img.nii.gz`` for k = 0..K-1 (int16 HU) and ``{id}.label.nii.gz``
(uint8 binary coronary mask; its presence marks a finished case). Case ids are the
names of ``*.label.nii.gz`` with the suffix stripped. A plain ImageCAS-style
``{id}.img.nii.gz`` is accepted as a single view.

Cache layout: see `syncas_jax.data.layout` (views.npy, label.npy, fg.npy, json per case;
dataset.json). Every file is written atomically (temporary name, then rename).

Properties (JSON) hold everything needed to undo the steps: ``original_shape``
(z, y, x), ``original_spacing`` (mm), ``affine`` (4x4, file voxel→world),
``axis_order`` "zyx", ``crop_bbox`` [[z0, z1], [y0, y1], [x0, x1]] (half-open, in the
original grid), ``shape_after_crop``, ``target_spacing``, ``shape_after_resample``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import cc3d
import fill_voids
import numpy as np
from scipy import ndimage as ndi

from syncas_jax import io
from syncas_jax.console import progress
from syncas_jax.data.layout import CACHE_FORMAT, PATCH_SIZE, TARGET_SPACING, cache_paths

HU_CLIP: tuple[float, float] = (-150.0, 250.0)
HU_CENTER = 50.0
HU_SCALE = 200.0
ANISOTROPY_THRESHOLD = 3.0
MAX_FOREGROUND_LOCATIONS = 20_000
FOREGROUND_SEED = 1234


# --------------------------------------------------------------------------- intensity


def normalize_ct(hu: np.ndarray) -> np.ndarray:
    """HU → float32 (hu.clip(-150, 250) - 50) / 200, values in [-1, 1]."""
    clipped = np.clip(np.asarray(hu, dtype=np.float32), *HU_CLIP)
    return ((clipped - np.float32(HU_CENTER)) / np.float32(HU_SCALE)).astype(np.float32)


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


# ------------------------------------------------------------------------ branch labels


def branch_labels(mask: np.ndarray) -> np.ndarray:
    """int16 (Z, Y, X): 6-connected components of mask > 0 ranked by size (largest 1), background 0.

    Equal sizes are ordered by their first voxel in C order.
    """
    mask = np.asarray(mask) > 0
    components = cc3d.connected_components(mask, connectivity=6)
    flat = components.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return np.zeros(mask.shape, np.int16)
    ids, first, sizes = np.unique(flat[where], return_index=True, return_counts=True)
    if ids.size > np.iinfo(np.int16).max:
        raise ValueError(f"{ids.size} coronary components do not fit int16 branch labels")
    rank = np.lexsort((where[first], -sizes))  # by size descending, then first voxel
    lookup = np.zeros(int(ids.max()) + 1, np.int16)
    lookup[ids[rank]] = np.arange(1, ids.size + 1, dtype=np.int16)
    return lookup[components]


def foreground_locations(label: np.ndarray, limit: int = MAX_FOREGROUND_LOCATIONS) -> np.ndarray:
    """int32 (M, 3) (z, y, x) indices of label > 0; at most `limit`, a seeded subsample in C order."""
    coords = np.argwhere(np.asarray(label) > 0).astype(np.int32)
    if len(coords) > limit:
        keep = np.random.default_rng(FOREGROUND_SEED).choice(len(coords), limit, replace=False)
        coords = coords[np.sort(keep)]
    return coords.reshape(-1, 3)


# -------------------------------------------------------------------- images and cases


def _preprocess_hu(
    hu: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float], mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(C, Z, Y, X) HU [+ (Z, Y, X) mask] → cropped, windowed, resampled (C, Z', Y', X') float32 [+ uint8 mask]."""
    cropped, cropped_mask, box = crop_to_nonzero(hu, mask)
    new_shape = compute_new_shape(cropped.shape[1:], spacing, target_spacing)
    data = resample(normalize_ct(cropped), new_shape, spacing, target_spacing).astype(np.float32)
    if cropped_mask is not None:
        cropped_mask = resample((cropped_mask > 0).astype(np.uint8), new_shape, spacing, target_spacing, is_label=True)
    properties = {
        "axis_order": "zyx",
        "original_shape": [int(n) for n in hu.shape[1:]],
        "original_spacing": [float(s) for s in spacing],
        "crop_bbox": box,
        "shape_after_crop": [int(n) for n in cropped.shape[1:]],
        "target_spacing": [float(s) for s in target_spacing],
        "shape_after_resample": [int(n) for n in new_shape],
        "separate_axis": separate_axis(spacing, target_spacing),
    }
    return data, cropped_mask, properties


def preprocess_image(
    volume: io.Volume, target_spacing: Sequence[float] = TARGET_SPACING
) -> tuple[np.ndarray, dict[str, Any]]:
    """One CT volume (HU, (z, y, x)) → (float32 (Z', Y', X') network input, properties for `restore_to_original`)."""
    data, _, properties = _preprocess_hu(volume.array[None], volume.spacing, target_spacing, None)
    properties["affine"] = np.asarray(volume.affine, float).tolist()
    return data[0], properties


class PreprocessedCase(NamedTuple):
    """views: float32 (V, Z, Y, X); label: int16 (Z, Y, X) branch ids; foreground: int32 (M, 3); properties."""

    views: np.ndarray
    label: np.ndarray
    foreground: np.ndarray
    properties: dict[str, Any]


def preprocess_case(
    views: Sequence[io.Volume], label: io.Volume, target_spacing: Sequence[float] = TARGET_SPACING
) -> PreprocessedCase:
    """K views (HU) + binary coronary label on one grid → cache arrays and properties.

    Raises io.InputError (naming the file) when views or label disagree in shape or affine.
    An empty label is allowed (properties["empty_label"] = True; no foreground locations).
    """
    if not views:
        raise io.InputError(label.path, "no image views for this label")
    for other in (*views[1:], label):
        io.check_same_grid(views[0], other)
    hu = np.stack([np.asarray(v.array, np.float32) for v in views])
    data, mask, properties = _preprocess_hu(hu, views[0].spacing, target_spacing, np.asarray(label.array) > 0)
    branches = branch_labels(mask)
    foreground = foreground_locations(branches)
    properties.update(
        affine=np.asarray(views[0].affine, float).tolist(),
        num_views=len(views),
        num_branches=int(branches.max()),
        num_foreground_voxels=int(np.count_nonzero(branches)),
        empty_label=bool(not np.any(np.asarray(label.array) > 0)),
        source_files=[v.path for v in views] + [label.path],
    )
    return PreprocessedCase(data, branches, foreground, properties)


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
    Write with ``io.write_volume(result, path, like=the input volume)`` to restore the file's axes.
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


# -------------------------------------------------------------------------- the cache


def _save_npy(array: np.ndarray, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array))


def write_cached_case(cache_dir: str | os.PathLike, case_id: str, case: PreprocessedCase) -> None:
    """Write one case atomically; the properties JSON goes last and marks the case done."""
    paths = cache_paths(cache_dir, case_id)
    paths["properties"].unlink(missing_ok=True)  # a crash mid-rewrite leaves the case "not done"
    _save_npy(case.views.astype(np.float32, copy=False), paths["views"])
    _save_npy(case.label.astype(np.int16, copy=False), paths["label"])
    _save_npy(case.foreground.astype(np.int32, copy=False).reshape(-1, 3), paths["fg"])
    io.write_json({**case.properties, "case_id": case_id, "cache_format": CACHE_FORMAT}, paths["properties"])


def is_cached(cache_dir: str | os.PathLike, case_id: str) -> bool:
    """True when every file of the case exists (properties written last)."""
    return all(p.exists() for p in cache_paths(cache_dir, case_id).values())


def cached_case_ids(cache_dir: str | os.PathLike) -> list[str]:
    """Sorted ids of the finished cases in a cache folder."""
    ids = (p.name[: -len(".json")] for p in Path(cache_dir).glob("*.json") if p.name != "dataset.json")
    return sorted(i for i in ids if is_cached(cache_dir, i))


def read_properties(cache_dir: str | os.PathLike, case_id: str) -> dict[str, Any]:
    path = cache_paths(cache_dir, case_id)["properties"]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise io.InputError(path, f"cannot read case properties ({error})") from None


def read_dataset_info(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """dataset.json of a cache folder (spacing, cases, num_views, patch_size)."""
    path = Path(cache_dir) / "dataset.json"
    if not path.exists():
        raise io.InputError(path, "not found: run `python -m syncas_jax.preprocess` first")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise io.InputError(path, f"not valid JSON ({error})") from None


def write_dataset_info(cache_dir: str | os.PathLike, target_spacing: Sequence[float]) -> dict[str, Any]:
    """(Re)write dataset.json from the finished cases in the folder."""
    cases = cached_case_ids(cache_dir)
    views = {c: int(read_properties(cache_dir, c).get("num_views", 0)) for c in cases}
    counts = sorted(set(views.values()))
    info = {
        "cache_format": CACHE_FORMAT,
        "spacing": [float(s) for s in target_spacing],
        "axis_order": "zyx",
        "num_views": counts[0] if len(counts) == 1 else counts,
        "cases": cases,
        "num_cases": len(cases),
        "patch_size": list(PATCH_SIZE),
        "normalization": {"clip_hu": list(HU_CLIP), "subtract": HU_CENTER, "divide": HU_SCALE},
        "labels": {"-1": "outside the volume (loader padding)", "0": "background", "1..": "branches by size"},
    }
    io.write_json(info, Path(cache_dir) / "dataset.json")
    return info


# ---------------------------------------------------------------------- input folders


_VIEW = re.compile(r"^(?P<id>.+)\.view(?P<k>\d+)\.img\.nii(\.gz)?$")


@dataclass
class CaseFiles:
    """The NIfTI files of one input case: views in k order, the coronary label."""

    case_id: str
    views: list[Path]
    label: Path


def find_cases(input_dir: str | os.PathLike) -> list[CaseFiles]:
    """Cases of a synth/ImageCAS folder, sorted by id. A case without any image is returned with no views."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise io.InputError(input_dir, "input folder not found")
    labels = sorted(p for p in input_dir.iterdir() if re.search(r"\.label\.nii(\.gz)?$", p.name))
    views: dict[str, dict[int, Path]] = {}
    for p in input_dir.iterdir():
        match = _VIEW.match(p.name)
        if match:
            views.setdefault(match["id"], {})[int(match["k"])] = p
    cases = []
    for label in labels:
        case_id = io.strip_nifti_suffix(label.name)[: -len(".label")]
        found = views.get(case_id, {})
        if found:
            paths = [found[k] for k in sorted(found)]
        else:
            paths = [p for p in (input_dir / f"{case_id}.img.nii.gz", input_dir / f"{case_id}.img.nii") if p.exists()]
        cases.append(CaseFiles(case_id, paths, label))
    return cases


@dataclass
class CaseResult:
    case_id: str
    status: str  # "done", "skipped" or "failed"
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def process_case_files(
    files: CaseFiles, output_dir: str | os.PathLike, target_spacing: Sequence[float], overwrite: bool = False
) -> CaseResult:
    """Read, preprocess and cache one case; never raises for bad input (the result says what failed)."""
    if not overwrite and is_cached(output_dir, files.case_id):
        return CaseResult(files.case_id, "skipped")
    try:
        if not files.views:
            raise io.InputError(files.label, f"no image for this label (expected {files.case_id}.view0.img.nii.gz)")
        ks = [int(_VIEW.match(p.name)["k"]) for p in files.views if _VIEW.match(p.name)]
        if ks and ks != list(range(len(ks))):
            expected = f"expected 0..{len(ks) - 1}"
            raise io.InputError(files.views[0].parent, f"case {files.case_id} has views {ks}, {expected}")
        views = [io.read_volume(p, dtype=np.float32) for p in files.views]
        label = io.read_volume(files.label, dtype=np.float32)
        case = preprocess_case(views, label, target_spacing)
        write_cached_case(output_dir, files.case_id, case)
    except io.InputError as error:
        return CaseResult(files.case_id, "failed", str(error))
    except Exception as error:  # keep the run going; report the unexpected error with its type
        return CaseResult(files.case_id, "failed", f"unexpected {type(error).__name__}: {error}")
    notes = []
    if case.properties["empty_label"]:
        notes.append(f"{files.label}: empty coronary label; case kept as a negative example")
    elif case.properties["num_foreground_voxels"] == 0:
        notes.append(f"{files.label}: coronary label vanished after resampling; case kept as a negative example")
    return CaseResult(files.case_id, "done", warnings=notes)


def preprocess_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float] = TARGET_SPACING,
    workers: int = 1,
    overwrite: bool = False,
) -> list[CaseResult]:
    """Preprocess every case of `input_dir` into the cache `output_dir`, in parallel over cases.

    Finished cases are skipped unless `overwrite`; a failing case is reported in its
    CaseResult and never stops the others. dataset.json is rewritten at the end.
    Raises io.InputError when the folder has no cases or the cache was made with another spacing.
    """
    cases = find_cases(input_dir)
    if not cases:
        raise io.InputError(input_dir, "no cases found (expected {id}.label.nii.gz with {id}.view0.img.nii.gz)")
    output_dir = Path(output_dir)
    info_path = output_dir / "dataset.json"
    if info_path.exists() and not overwrite:
        old = read_dataset_info(output_dir).get("spacing")
        if old is not None and not np.allclose(old, target_spacing):
            raise io.InputError(info_path, f"cache made with spacing {old}; use --overwrite or another output folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    results: list[CaseResult] = []

    def report(result: CaseResult) -> None:
        results.append(result)
        for note in result.warnings:
            _note(f"warning: {note}")
        if result.status == "failed":
            _note(f"error: case {result.case_id}: {result.message}")

    args = (output_dir, tuple(float(s) for s in target_spacing), overwrite)
    if workers <= 1:
        for files in progress(cases, "preprocess"):
            report(process_case_files(files, *args))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(process_case_files, files, *args) for files in cases]
            for future in progress(as_completed(futures), "preprocess", total=len(futures)):
                report(future.result())
    write_dataset_info(output_dir, target_spacing)
    return sorted(results, key=lambda r: r.case_id)


def _note(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)
