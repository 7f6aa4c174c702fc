"""A coronary mask as a DICOM Segmentation object (highdicom) that references its source CT series.

PACS viewers and 3D Slicer open it as an overlay on the series: one binary segment "Coronary
arteries" (SNOMED CT 41801008, category anatomical structure), algorithm type AUTOMATIC, one
frame per source slice that holds any mask voxel (all frames when the mask is empty), each frame
referencing its source instance and carrying its plane position.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from syncas_jax.common.dicom import DicomSeries, volume_to_frames
from syncas_jax.common.files import atomic_path

SEGMENT_LABEL = "Coronary arteries"
SERIES_NUMBER_OFFSET = 1000  # the SEG series number: the source's + 1000


def segmentation_dataset(mask_zyx: np.ndarray, series: DicomSeries, software_version: str) -> Any:
    """highdicom Segmentation of the (z, y, x) mask (value > 0) on the grid of `series.volume`."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.asarray(mask_zyx) > 0
    if mask.shape != series.volume.array.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the series' {series.volume.array.shape}")
    frames = np.ascontiguousarray(volume_to_frames(mask)).astype(np.uint8)  # (slices, rows, columns), datasets order
    algorithm = hd.AlgorithmIdentificationSequence(
        name="syncas_jax", version=software_version, family=codes.cid7162.ArtificialIntelligence
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.CoronaryArtery,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    source_number = series.datasets[0].get("SeriesNumber", None)
    return hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=int(source_number or 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="syncas_jax",
        manufacturer_model_name="SynCAS coronary artery segmentation",
        software_versions=software_version,
        device_serial_number="0",
        series_description="Coronary arteries (syncas_jax)",
        content_label="CORONARIES",
        omit_empty_frames=bool(mask.any()),
    )


def write_dicom_seg(
    mask_zyx: np.ndarray, series: DicomSeries, path: str | os.PathLike, software_version: str = "0"
) -> None:
    """Write `segmentation_dataset(mask, series)` to `path`, atomically."""
    dataset = segmentation_dataset(mask_zyx, series, software_version)
    with atomic_path(path) as tmp:
        dataset.save_as(tmp)
