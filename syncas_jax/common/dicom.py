"""DICOM CT series → the same `Volume` that `read_volume` gives for a NIfTI file.

A series folder holds one single-frame CT image per file (any file names, any order; files
without the DICOM preamble, hidden files and non-image objects are ignored). The reader
(pydicom: pure Python, no compiled dependency, decoders for compressed pixel data as
optional plug-ins) builds the geometry as dcm2niix does, so our masks line up voxel for
voxel with dcm2niix's NIfTI of the same series:

* slice normal n = row direction × column direction (ImageOrientationPatient); slices
  sorted by ImagePositionPatient · n, ascending; slice spacing from the positions;
* voxel (i, j, k) = (column, rows − 1 − row, slice): dcm2niix stores the rows flipped;
* the affine maps (i, j, k) to RAS world mm: DICOM's LPS patient coordinates with x and y
  negated; sform and qform code 1 (scanner);
* HU = stored value × RescaleSlope + RescaleIntercept, per slice.

Refused with one InputError line naming the folder: several series in one folder, mixed
orientations or sizes, duplicate positions, missing slices or uneven spacing, gantry tilt
(slices sheared against their normal), a modality other than CT, multi-frame objects, and
compressed pixel data without an installed decoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import Volume, read_volume

#: Relative deviation of a slice gap from the mean gap that still counts as even (positions are
#: often rounded to 0.01-0.1 mm); a missing slice doubles its gap.
SPACING_TOLERANCE = 0.05
SPACING_TOLERANCE_MM = 0.1
#: Largest in-plane shift of the slice stack per mm along the normal (tan of the shear angle, ~0.6°).
TILT_TOLERANCE = 0.01
ORIENTATION_TOLERANCE = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class DicomSeries:
    """A read series: the volume (HU, (z, y, x) = (slice, flipped row, column), dcm2niix geometry) and the
    slices' metadata (pydicom Datasets without pixel data) in the volume's slice order."""

    volume: Volume
    datasets: list[Any]
    folder: Path


# ------------------------------------------------------------------------------- files


def is_dicom_file(path: Path) -> bool:
    """True for a regular, non-hidden file with the DICOM preamble ('DICM' at byte 128)."""
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_dicom_file(p)) if folder.is_dir() else []


def find_series_folders(root: str | os.PathLike) -> list[Path]:
    """`root` itself when it holds DICOM files, else every folder below it that does (sorted)."""
    root = Path(root)
    if dicom_files(root):
        return [root]
    found = []
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
        if Path(folder) != root and dicom_files(folder):
            found.append(Path(folder))
    return sorted(found)


# ---------------------------------------------------------------------------- geometry


def series_affine(
    orientation: Sequence[float],
    first_position: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_spacing: float,
    rows: int,
) -> np.ndarray:
    """dcm2niix's NIfTI affine: voxel (i, j, k) = (column, rows − 1 − row, slice) → RAS mm.

    orientation: ImageOrientationPatient (row direction, column direction; LPS unit vectors);
    first_position: ImagePositionPatient of the first slice along the normal (LPS mm);
    pixel_spacing: PixelSpacing (between rows, between columns) mm; slice_spacing: mm along the normal.
    """
    row_dir = np.asarray(orientation[:3], float)
    col_dir = np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * float(pixel_spacing[1])
    lps[:3, 1] = -col_dir * float(pixel_spacing[0])
    lps[:3, 2] = normal * float(slice_spacing)
    lps[:3, 3] = np.asarray(first_position, float) + (rows - 1) * float(pixel_spacing[0]) * col_dir
    affine = np.eye(4)
    affine[:3] = LPS_TO_RAS @ lps[:3]
    return affine


def frames_to_volume(frames: np.ndarray) -> np.ndarray:
    """(K, rows, columns) slices in DICOM pixel order → (z, y, x) volume order (rows flipped)."""
    return np.asarray(frames)[:, ::-1, :]


def volume_to_frames(array_zyx: np.ndarray) -> np.ndarray:
    """(z, y, x) volume order → (K, rows, columns) slices in DICOM pixel order (the inverse)."""
    return np.asarray(array_zyx)[:, ::-1, :]


def _nifti_header(shape_zyx: tuple[int, int, int], spacing: tuple[float, float, float], affine: np.ndarray) -> Any:
    header = nib.Nifti1Header()
    header.set_data_shape((shape_zyx[2], shape_zyx[1], shape_zyx[0]))
    header.set_data_dtype(np.float32)
    header.set_zooms((spacing[2], spacing[1], spacing[0]))
    header.set_xyzt_units("mm")
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    return header


# ------------------------------------------------------------------------------ reading


def _read_headers(folder: Path) -> list[Any]:
    import pydicom

    datasets = []
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # pydicom raises many types for damaged files
            raise InputError(folder, f"cannot read DICOM file {path.name} ({type(error).__name__}: {error})") from None
        if "Rows" in ds and "ImagePositionPatient" in ds:  # image instances only (no DICOMDIR, SR, ...)
            ds.filename = str(path)
            datasets.append(ds)
    if not datasets:
        raise InputError(folder, "no DICOM images with a patient position in the folder")
    return datasets


def _check_one_ct_series(folder: Path, datasets: list[Any]) -> None:
    series = {}
    for ds in datasets:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), ds)
    if len(series) > 1:
        names = ", ".join(
            f"#{ds.get('SeriesNumber', '?')} {ds.get('SeriesDescription', '')}".strip() for ds in series.values()
        )
        raise InputError(folder, f"holds {len(series)} series ({names}): put each series in its own folder")
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if modalities != ["CT"]:
        raise InputError(folder, f"modality {'/'.join(modalities) or 'missing'}, expected CT")
    frames = max(int(ds.get("NumberOfFrames", 1) or 1) for ds in datasets)
    if frames > 1:
        raise InputError(folder, f"multi-frame DICOM ({frames} frames per file) is not supported; export single-frame")
    for key in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient"):
        if any(key not in ds for ds in datasets):
            raise InputError(folder, f"a slice has no {key}")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise InputError(folder, f"slices of different sizes {sorted(sizes)}")
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in datasets])
    if np.ptp(spacings, axis=0).max() > 1e-4:
        raise InputError(folder, "slices with different pixel spacings")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        raise InputError(folder, "slices with different orientations (a localizer or several stacks in one series?)")


def _sort_along_normal(folder: Path, datasets: list[Any]) -> tuple[list[Any], float]:
    """Datasets sorted by position along the slice normal, and the mean slice spacing (mm)."""
    orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    datasets, positions, depth = [datasets[i] for i in order], positions[order], depth[order]
    if len(datasets) < 2:
        raise InputError(folder, "a single slice is not a volume")
    gaps = np.diff(depth)
    if gaps.min() < 1e-3:
        raise InputError(
            folder, "several slices share one position (several phases or acquisitions in one series?)"
        )
    spacing = float((depth[-1] - depth[0]) / (len(depth) - 1))
    tolerance = max(SPACING_TOLERANCE * spacing, SPACING_TOLERANCE_MM)
    if np.abs(gaps - spacing).max() > tolerance:
        worst = int(np.argmax(np.abs(gaps - spacing)))
        raise InputError(
            folder,
            f"uneven slice spacing: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm (largest deviation after "
            f"slice {worst + 1} of {len(gaps) + 1}; missing slices?)",
        )
    shift = positions[-1] - positions[0]
    shear = shift - (shift @ normal) * normal
    tilt = float(np.linalg.norm(shear) / (depth[-1] - depth[0]))
    if tilt > TILT_TOLERANCE:
        raise InputError(
            folder,
            f"gantry tilt: slices are sheared {np.degrees(np.arctan(tilt)):.1f} degrees against their normal; "
            "correct the tilt first (e.g. dcm2niix writes a tilt-corrected NIfTI)",
        )
    return datasets, spacing


def _check_decoder(folder: Path, transfer_syntax: Any) -> None:
    """InputError when pixel data in `transfer_syntax` cannot be decoded with what is installed."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(folder, f"pixel data compressed as {uid.name}: no DICOM decoder exists for it") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plug-in"
        raise InputError(folder, f"pixel data compressed as {uid.name}: no decoder installed (install {needs})")


def _read_pixels(folder: Path, datasets: list[Any]) -> np.ndarray:
    """float32 (K, rows, columns) HU, slices in `datasets` order."""
    import pydicom

    syntaxes = {str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")) for ds in datasets}
    for syntax in sorted(syntaxes - {""}):
        _check_decoder(folder, syntax)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    frames = np.empty((len(datasets), rows, columns), np.float32)
    for k, header in enumerate(datasets):
        try:
            ds = pydicom.dcmread(header.filename)
            stored = ds.pixel_array
        except Exception as error:
            name = Path(header.filename).name
            raise InputError(folder, f"cannot decode pixel data of {name} ({type(error).__name__}: {error})") from None
        if stored.shape != (rows, columns):
            raise InputError(folder, f"pixel data of {Path(header.filename).name} has shape {stored.shape}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        frames[k] = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return frames


def read_dicom_series(folder: str | os.PathLike) -> DicomSeries:
    """Read one CT series folder into a `DicomSeries` (HU volume in dcm2niix geometry + slice metadata).

    Raises InputError naming the folder for every problem listed in the module docstring.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM series folder not found")
    datasets = _read_headers(folder)
    _check_one_ct_series(folder, datasets)
    datasets, slice_spacing = _sort_along_normal(folder, datasets)
    first = datasets[0]
    pixel_spacing = [float(v) for v in first.PixelSpacing]
    affine = series_affine(
        [float(v) for v in first.ImageOrientationPatient],
        [float(v) for v in first.ImagePositionPatient],
        pixel_spacing,
        slice_spacing,
        int(first.Rows),
    )
    array = np.ascontiguousarray(frames_to_volume(_read_pixels(folder, datasets)))
    spacing = (slice_spacing, pixel_spacing[0], pixel_spacing[1])
    header = _nifti_header(array.shape, spacing, affine)
    volume = Volume(array=array, spacing=spacing, affine=affine, header=header, path=str(folder))
    return DicomSeries(volume=volume, datasets=datasets, folder=folder)


def read_scan(path: str | os.PathLike) -> Volume:
    """A CT scan as a Volume (HU): a NIfTI file (`read_volume`, float32) or a DICOM series folder."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path).volume
    return read_volume(path, dtype=np.float32)
