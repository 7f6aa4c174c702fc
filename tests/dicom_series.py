"""Writing CT series with pydicom for the tests: any slice of a NIfTI-style volume, any layout.

A source is a (z, y, x) HU array with its NIfTI affine (RAS, for (i, j, k) = (x, y, z)). A
layout says which source axis, and in which direction, each DICOM axis (column, row, slice)
runs along; the DICOM geometry (ImageOrientationPatient, ImagePositionPatient, PixelSpacing)
is derived from the source affine by the standard's definitions (patient LPS = RAS with x, y
negated; position of pixel (r, c) = IPP + c Δc row_dir + r Δr col_dir), independently of the
reader under test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# (source ijk axis, flipped) for DICOM (column, row, slice)
AXIAL_LPS = ((0, False), (1, False), (2, False))  # rows anterior→posterior, columns right→left, feet first
AXIAL_FLIPPED = ((0, True), (1, True), (2, False))  # rows posterior→anterior, columns left→right
AXIAL_HEAD_FIRST = ((0, False), (1, True), (2, True))  # normal points to the feet: slices stored head→feet
CORONAL = ((0, False), (2, True), (1, False))  # slices along anterior→posterior, rows head→feet

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_index_affine(affine_ras: np.ndarray, shape_zyx: Sequence[int], layout) -> np.ndarray:
    """4x4 map from DICOM (column, row, slice) indices to LPS mm for a source with `affine_ras`."""
    shape_ijk = tuple(reversed(tuple(shape_zyx)))
    select = np.zeros((4, 4))
    select[3, 3] = 1
    for dicom_axis, (source_axis, flipped) in enumerate(layout):
        select[source_axis, dicom_axis] = -1 if flipped else 1
        if flipped:
            select[source_axis, 3] = shape_ijk[source_axis] - 1
    return LPS_FROM_RAS @ np.asarray(affine_ras, float) @ select


def dicom_frames(hu_zyx: np.ndarray, layout) -> np.ndarray:
    """(slices, rows, columns) pixel arrays of the source in `layout`."""
    crs = np.transpose(np.asarray(hu_zyx).T, [source for source, _ in layout])
    for axis, (_, flipped) in enumerate(layout):
        if flipped:
            crs = np.flip(crs, axis=axis)
    return np.ascontiguousarray(np.transpose(crs, (2, 1, 0)))


def write_series(
    folder: str | os.PathLike,
    hu_zyx: np.ndarray,
    affine_ras: np.ndarray,
    layout=AXIAL_LPS,
    *,
    unsigned: bool = False,
    intercept: float = 0.0,
    slope: float = 1.0,
    seed: int | None = 0,
    modality: str = "CT",
    drop_slices: Sequence[int] = (),
    tilt_mm_per_slice: float = 0.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_number: int = 3,
    transfer_syntax: str | None = None,
    prefix: str = "IM",
) -> list[Path]:
    """Write one single-frame CT file per slice (shuffled names when `seed` is set); return the paths.

    Stored value = (HU − intercept) / slope, rounded; int16, or uint16 with `unsigned`.
    tilt_mm_per_slice shears the stack along the row direction (gantry tilt).
    transfer_syntax: declare a compressed syntax with dummy fragments (pixel data not decodable).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = dicom_frames(hu_zyx, layout)
    index = dicom_index_affine(affine_ras, np.shape(hu_zyx), layout)
    delta_c, delta_r = np.linalg.norm(index[:3, 0]), np.linalg.norm(index[:3, 1])
    row_dir, col_dir = index[:3, 0] / delta_c, index[:3, 1] / delta_r
    study_uid, series_uid, frame_uid = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    keep = [k for k in range(len(frames)) if k not in set(drop_slices)]
    order = np.random.default_rng(seed).permutation(len(keep)) if seed is not None else np.arange(len(keep))
    paths = []
    for number, k in zip(order, keep):
        stored = np.rint((frames[k].astype(np.float64) - intercept) / slope)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P01", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20250101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "syncas tests"
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, "calcium score", int(k) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = frames[k].shape
        ds.PixelSpacing = [float(delta_r), float(delta_c)]
        ds.SliceThickness = float(np.linalg.norm(index[:3, 2]))
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
        position = index @ np.array([0.0, 0.0, k, 1.0])
        position[:3] += k * tilt_mm_per_slice * row_dir
        ds.ImagePositionPatient = [round(float(v), 6) for v in position[:3]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, slope, "HU"
        dtype = np.uint16 if unsigned else np.int16
        info = np.iinfo(dtype)
        assert stored.min() >= info.min and stored.max() <= info.max, "value out of the stored type's range"
        ds.PixelData = stored.astype(dtype).tobytes()
        if transfer_syntax is not None:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
            ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
            ds["PixelData"].VR = "OB"
        path = folder / f"{prefix}{number:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
