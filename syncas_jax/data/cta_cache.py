"""The CTA cache: what online synthesis renders training views from (`python -m syncas_jax.preprocess --cta`).

Input: the folder `synth` takes — per case ``{id}.img.nii.gz`` (CTA, HU) and ``{id}.label.nii.gz``
(label map: TotalSegmentator ids, coronary 128). Per case, with the NCCT cache's orientation, crop
and resampling rules (`syncas_jax.data.orientation`, `syncas_jax.data.transforms`): reorient to the
canonical axes, crop to the nonzero region of the CTA, resample
to the target spacing (HU: third-order in-plane, nearest along a separate coarse axis; the label
map: nearest; the coronary mask: as the NCCT cache resamples its label, so branch labels and
foreground locations are the NCCT cache's), then store (layout: `syncas_jax.data.layout`):

* ``hu`` int16 CTA HU and ``organs`` uint8 label map (coronary = the resampled coronary mask);
* ``label`` branch labels and ``fg`` foreground locations, as the NCCT cache;
* ``sinogram`` float32 (Z, A, S): per slice, `ct.project` (blur σ 0.5 → Radon) of the realistic
  render (table HU, no offsets) of the whole cached slice, for the noise of crops (`synth.online`);
* ``photons`` float32 (Z,): the photon-count factor that keeps each slice's noise level that of
  the offline pipeline (acquire at the native grid, then resample): r_y·r_x / f_z, where
  r = native / target in-plane spacing (a finer grid than native raises the noise, measured at
  ≈ r² in variance) and f_z = Σ_j w_kj² is the noise variance left by the z interpolation weights
  w_kj of output slice k (1 when z is resampled by nearest neighbour, nnU-Net's separate-axis rule);
* ``centreline`` float32 (N ≤ 4096, 7): the plaque sites of `plaques.coronary_centreline` on the
  native mask (as `synth`), mapped into the cached grid (mm), via `plaques.centreline_table`.

dataset.json says ``"kind": "cta"`` and records the HU table and the largest sinogram, lumen
radius and centreline of the cases (the loader's static shapes).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.common.files import atomic_path, write_json
from syncas_jax.common.nifti import Volume, check_same_grid, read_volume
from syncas_jax.data.cache import (
    CaseFiles,
    CaseResult,
    branch_labels,
    cache_case,
    cached_case_ids,
    foreground_locations,
    is_cached,
    preprocess_folder,
    read_dataset_info,
    read_properties,
)
from syncas_jax.data.layout import CACHE_FORMAT, PATCH_SIZE, TARGET_SPACING, cache_paths
from syncas_jax.data.orientation import to_canonical
from syncas_jax.data.transforms import (
    HU_CENTER,
    HU_CLIP,
    HU_SCALE,
    compute_new_shape,
    crop_to_nonzero,
    resample,
    resampling_properties,
)
from syncas_jax.synth.ct import N_ANGLES, project
from syncas_jax.synth.hu import reassign_hu
from syncas_jax.synth.hu_table import CORONARY_ID, get_table
from syncas_jax.synth.plaques import Centreline, centreline_table, coronary_centreline

KIND = "cta"
MAX_CENTRELINE_POINTS = 4096
CENTRELINE_SEED = 4321
SINOGRAM_CHUNK = 16  # slices projected at once


class CtaCase(NamedTuple):
    """The arrays of one cached CTA case (see the module docstring) and its properties."""

    hu: np.ndarray
    organs: np.ndarray
    label: np.ndarray
    foreground: np.ndarray
    sinogram: np.ndarray
    photons: np.ndarray
    centreline: np.ndarray
    properties: dict[str, Any]


# ------------------------------------------------------------------------------ pieces


def check_label_map(label: Volume, table: tuple[tuple[int, str, float], ...]) -> np.ndarray:
    """uint8 (Z, Y, X) label ids of a CTA label map; InputError naming the file unless it holds integer
    ids ≤ 255, the coronary arteries (128) and at least one other structure of the HU table."""
    values = np.asarray(label.array)
    if not np.array_equal(values, np.rint(values)) or values.min() < 0 or values.max() > 255:
        raise InputError(label.path, f"label map must hold integer ids in 0…255, found {values.min()}…{values.max()}")
    ids = values.astype(np.uint8)
    if not np.any(ids == CORONARY_ID):
        raise InputError(label.path, f"no coronary label (id {CORONARY_ID}); build the map with syncas_jax.synth.merge")
    organs = [i for i, _, _ in table if i != CORONARY_ID]
    if not np.any(np.isin(ids, organs)):
        raise InputError(label.path, f"no structure of the HU table (ids {organs}) besides the coronary arteries")
    return ids


def slice_noise_factor(n_slices: int, n_out: int, spacing: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """f_z (n_out,): Σ_j w_kj² of the z weights with which `resample` makes output slice k from the input
    slices (the variance left of noise that is independent between slices). Found by resampling impulses."""
    impulses = np.eye(n_slices, dtype=np.float32).reshape(n_slices, n_slices, 1, 1)
    weights = resample(impulses, (n_out, 1, 1), spacing, target)[:, :, 0, 0]  # (input j, output k)
    return np.sum(weights.astype(np.float64) ** 2, axis=0)


def photon_factors(
    n_slices: int, n_out: int, spacing: Sequence[float], target: Sequence[float]
) -> np.ndarray:
    """float32 (n_out,): r_y·r_x / f_z per cached slice (module docstring)."""
    in_plane = (spacing[1] / target[1]) * (spacing[2] / target[2])
    return (in_plane / slice_noise_factor(n_slices, n_out, spacing, target)).astype(np.float32)


def realistic_sinograms(hu: np.ndarray, organs: np.ndarray, table: tuple[tuple[int, str, float], ...]) -> np.ndarray:
    """float32 (Z, A, S): `ct.project` of every slice of the realistic render (table HU, no offsets)."""
    realistic = np.asarray(reassign_hu(hu.astype(np.float32), organs, jax.random.key(0), table, offsets=False))
    projector = jax.jit(project)
    chunks = []
    for start in range(0, realistic.shape[0], SINOGRAM_CHUNK):
        block = realistic[start : start + SINOGRAM_CHUNK]
        pad = SINOGRAM_CHUNK - block.shape[0]
        block = np.concatenate([block, np.zeros((pad, *block.shape[1:]), np.float32)]) if pad else block
        sinogram = np.asarray(projector(np.moveaxis(block, 0, -1)))  # (A, S, chunk)
        chunks.append(np.moveaxis(sinogram, -1, 0)[: SINOGRAM_CHUNK - pad])
    return np.concatenate(chunks).astype(np.float32)


def cached_centreline(
    coronary: np.ndarray, spacing: Sequence[float], new_shape: Sequence[int], target: Sequence[float]
) -> np.ndarray:
    """float32 (N, 7) plaque sites of the cropped native coronary mask, in mm of the resampled grid.

    Native index i maps to (i + 0.5)·n_out/n_in − 0.5 (pixel-centre alignment, as `resample`).
    At most MAX_CENTRELINE_POINTS, a seeded subsample in skeleton order.
    """
    native = coronary_centreline(coronary, tuple(spacing))
    ratio = np.asarray(new_shape, np.float64) / np.asarray(coronary.shape, np.float64)
    points = (native.points + 0.5) * ratio - 0.5
    if len(points) > MAX_CENTRELINE_POINTS:
        keep = np.sort(np.random.default_rng(CENTRELINE_SEED).choice(len(points), MAX_CENTRELINE_POINTS, False))
        points, native = points[keep], Centreline(native.points[keep], native.radius_mm[keep], native.tangent[keep])
    return centreline_table(Centreline(points, native.radius_mm, native.tangent), tuple(target)).reshape(-1, 7)


# -------------------------------------------------------------------------------- cases


def preprocess_cta_case(
    image: Volume, label: Volume, target_spacing: Sequence[float] = TARGET_SPACING, hu_table: str = "reference"
) -> CtaCase:
    """CTA (HU) + label map on one grid → the CTA cache arrays and properties of one case.

    Raises InputError (naming the file) for a label map on another grid, without the coronary
    arteries or without any other structure of the HU table, or with ids that are not 0…255.
    """
    table = get_table(hu_table)
    check_same_grid(image, label)
    (image, move), (label, _) = to_canonical(image), to_canonical(label)
    ids = check_label_map(label, table)
    spacing = image.spacing
    cropped, cropped_ids, box = crop_to_nonzero(np.asarray(image.array, np.float32)[None], ids)
    new_shape = compute_new_shape(cropped.shape[1:], spacing, target_spacing)
    hu = resample(cropped[0], new_shape, spacing, target_spacing)
    hu = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    organs = resample(cropped_ids, new_shape, spacing, target_spacing, is_label=True, order=0).astype(np.uint8)
    coronary = cropped_ids == CORONARY_ID
    mask = resample(coronary.astype(np.uint8), new_shape, spacing, target_spacing, is_label=True)
    organs[mask > 0] = CORONARY_ID
    branches = branch_labels(mask)
    sinogram = realistic_sinograms(hu, organs, table)
    centreline = cached_centreline(coronary, spacing, new_shape, target_spacing)
    properties = resampling_properties(image.array.shape, spacing, box, cropped.shape[1:], target_spacing, new_shape)
    properties.update(
        affine=np.asarray(image.affine, float).tolist(),
        source_axcodes=list(move.source_axcodes),
        cache_kind=KIND,
        hu_table=hu_table,
        num_branches=int(branches.max()),
        num_foreground_voxels=int(np.count_nonzero(branches)),
        detector_bins=int(sinogram.shape[2]),
        centreline_points=int(len(centreline)),
        max_lumen_radius_mm=float(centreline[:, 3].max()) if len(centreline) else 0.0,
        source_files=[image.path, label.path],
    )
    photons = photon_factors(cropped.shape[1], new_shape[0], spacing, target_spacing)
    return CtaCase(hu, organs, branches, foreground_locations(branches), sinogram, photons, centreline, properties)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array))


def write_cta_case(cache_dir: str | os.PathLike, case_id: str, case: CtaCase) -> None:
    """Write one case atomically; the properties JSON goes last and marks the case done."""
    paths = cache_paths(cache_dir, case_id, KIND)
    paths["properties"].unlink(missing_ok=True)  # a crash mid-rewrite leaves the case "not done"
    arrays = {"hu": case.hu, "organs": case.organs, "label": case.label, "fg": case.foreground,
              "sinogram": case.sinogram, "photons": case.photons, "centreline": case.centreline}  # fmt: skip
    for name, array in arrays.items():
        _save_npy(array, paths[name])
    write_json({**case.properties, "case_id": case_id, "cache_format": CACHE_FORMAT}, paths["properties"])


def process_cta_case_files(
    files: CaseFiles,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float],
    overwrite: bool = False,
    hu_table: str = "reference",
) -> CaseResult:
    """Read, preprocess and cache one CTA case; never raises for bad input (the result says what failed)."""
    if not overwrite and is_cached(output_dir, files.case_id, KIND):
        return CaseResult(files.case_id, "skipped")

    def work() -> list[str]:
        if len(files.views) != 1 or ".view" in files.views[0].name:
            raise InputError(files.label, f"expected one CTA image {files.case_id}.img.nii.gz for this label map")
        image = read_volume(files.views[0], dtype=np.float32)
        label = read_volume(files.label, dtype=np.float32)
        case = preprocess_cta_case(image, label, target_spacing, hu_table)
        write_cta_case(output_dir, files.case_id, case)
        if case.properties["num_foreground_voxels"] == 0:
            return [f"{files.label}: coronary label vanished after resampling; case kept as a negative example"]
        return []

    return cache_case(files.case_id, work)


# -------------------------------------------------------------------------------- the cache


def write_cta_dataset_info(
    cache_dir: str | os.PathLike, target_spacing: Sequence[float], hu_table: str = "reference"
) -> dict[str, Any]:
    """(Re)write dataset.json of a CTA cache from its finished cases."""
    cases = cached_case_ids(cache_dir, KIND)
    properties = [read_properties(cache_dir, c) for c in cases]
    info = {
        "cache_format": CACHE_FORMAT,
        "kind": KIND,
        "spacing": [float(s) for s in target_spacing],
        "axis_order": "zyx",
        "hu_table": hu_table,
        "cases": cases,
        "num_cases": len(cases),
        "patch_size": list(PATCH_SIZE),
        "n_angles": N_ANGLES,
        "detector_bins": max((p["detector_bins"] for p in properties), default=0),
        "centreline_points": max((p["centreline_points"] for p in properties), default=0),
        "max_lumen_radius_mm": max((p["max_lumen_radius_mm"] for p in properties), default=0.0),
        "normalization": {"clip_hu": list(HU_CLIP), "subtract": HU_CENTER, "divide": HU_SCALE},
        "labels": {"-1": "outside the volume (loader padding)", "0": "background", "1..": "branches by size"},
    }
    write_json(info, Path(cache_dir) / "dataset.json")
    return info


def preprocess_cta_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float] = TARGET_SPACING,
    workers: int = 1,
    overwrite: bool = False,
    hu_table: str = "reference",
    *,
    on_result: Callable[[CaseResult], None] | None = None,
    progress: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None,
) -> list[CaseResult]:
    """Build (or complete) a CTA cache from a folder of CTA cases; see `cache.preprocess_folder`.

    Raises InputError when the existing cache was made with another HU table.
    """
    get_table(hu_table)
    info_path = Path(output_dir) / "dataset.json"
    if info_path.exists() and not overwrite:
        old = read_dataset_info(output_dir).get("hu_table", hu_table)
        if old != hu_table:
            raise InputError(info_path, f"cache made with HU table {old!r}; use --overwrite or another output folder")
    return preprocess_folder(
        input_dir,
        output_dir,
        target_spacing,
        workers,
        overwrite,
        on_result=on_result,
        progress=progress,
        kind=KIND,
        process=functools.partial(process_cta_case_files, hu_table=hu_table),
        write_info=functools.partial(write_cta_dataset_info, hu_table=hu_table),
    )
