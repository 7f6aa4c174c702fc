"""Labelled real NCCT → the training cache (`python -m syncas_jax.preprocess --labelled`).

Input layouts (one folder; the first that matches wins):

* nnU-Net raw: ``dataset.json`` + ``imagesTr/{id}_0000{ending}`` + ``labelsTr/{id}{ending}``
  (``file_ending`` from dataset.json, default ``.nii.gz``); the coronary value is the label whose
  name contains "coronar", else the only foreground label (``--label N`` overrides);
* ours: ``{id}.img.nii.gz`` + ``{id}.label.nii.gz``;
* DICOM: a series folder ``{id}/`` + ``{id}.label.nii.gz`` beside it, the mask on the grid
  dcm2niix gives the series (`syncas_jax.common.dicom`).

The last two may be mixed in one folder. Each case goes through the synthetic cache's own
`preprocess_case` (canonical orientation, crop, window, resampling, branch labels), with the one
scan as the case's only view (V = 1). Training draws its contrastive pair from that one view
(design §12): the loader hands it over as both views and the per-view intensity augmentation makes
them differ.

Bad cases are one line naming the file and are skipped: no image for a label, a mask on another
grid, an empty mask, the chosen label value absent from the mask, a multi-label mask without
``--label``, a mask that vanishes when resampled.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from syncas_jax.common.dicom import dicom_files, read_scan
from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import NIFTI_SUFFIXES, Volume, check_same_grid, read_volume, strip_nifti_suffix
from syncas_jax.data.cache import (
    CaseFiles,
    CaseResult,
    cache_case,
    is_cached,
    preprocess_case,
    preprocess_folder,
    write_cached_case,
    write_dataset_info,
)
from syncas_jax.data.layout import TARGET_SPACING

NNUNET_INFO = "dataset.json"
CORONARY_NAME = re.compile(r"coronar", re.IGNORECASE)
LAYOUTS = ("nnunet", "ours")  # "ours" covers {id}.img.nii.gz and DICOM series folders {id}/


# --------------------------------------------------------------------------- finding cases


def is_nnunet_raw(folder: Path) -> bool:
    return (folder / NNUNET_INFO).is_file() and (folder / "labelsTr").is_dir()


def read_nnunet_info(folder: Path) -> dict[str, Any]:
    path = folder / NNUNET_INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(path, f"not valid JSON ({error})") from None
    if not isinstance(info, dict):
        raise InputError(path, "expected a JSON object")
    return info


def nnunet_labels(info: dict[str, Any], source: Path) -> dict[str, int]:
    """{name: value} of dataset.json's "labels" (v2 {name: value}, v1 {"value": name}); background left out."""
    labels = info.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(source, "has no 'labels' object")
    out: dict[str, int] = {}
    for key, value in labels.items():
        name, number = (value, key) if str(key).lstrip("-").isdigit() else (key, value)
        if isinstance(number, list):
            raise InputError(
                source, f"label '{name}' is a region (a list of values); give the coronary value: --label N"
            )
        try:
            out[str(name)] = int(number)
        except (TypeError, ValueError):
            raise InputError(source, f"label '{name}' has a non-integer value {number!r}") from None
    return {name: value for name, value in out.items() if value != 0}


def coronary_value(labels: dict[str, int], source: Path) -> int:
    """The value of the label named like the coronary arteries, else of the only foreground label."""
    named = sorted({value for name, value in labels.items() if CORONARY_NAME.search(name)})
    if len(named) == 1:
        return named[0]
    if not named and len(set(labels.values())) == 1:
        return next(iter(labels.values()))
    raise InputError(source, f"cannot tell which label is the coronary arteries among {labels}; pass --label N")


def find_nnunet_cases(folder: Path, info: dict[str, Any]) -> list[CaseFiles]:
    """Cases of labelsTr/, each with its channel-0 image in imagesTr/ (no views when it is missing)."""
    channels = info.get("channel_names", info.get("modality", {"0": "CT"}))
    if isinstance(channels, dict) and len(channels) > 1:
        raise InputError(
            folder / NNUNET_INFO, f"has {len(channels)} input channels {channels}; expected one CT channel"
        )
    ending = str(info.get("file_ending", ".nii.gz"))
    cases = []
    for label in sorted((folder / "labelsTr").iterdir()):
        if label.name.startswith(".") or not label.name.endswith(ending):
            continue
        case_id = label.name[: -len(ending)]
        image = folder / "imagesTr" / f"{case_id}_0000{ending}"
        cases.append(CaseFiles(case_id, [image] if image.exists() else [], label))
    return cases


def find_own_cases(folder: Path) -> list[CaseFiles]:
    """`{id}.label.nii.gz` with `{id}.img.nii.gz` (or `.nii`) or a DICOM series folder `{id}/`."""
    cases = []
    for label in sorted(p for p in folder.iterdir() if re.search(r"\.label\.nii(\.gz)?$", p.name)):
        case_id = strip_nifti_suffix(label.name)[: -len(".label")]
        images = [folder / f"{case_id}.img{suffix}" for suffix in NIFTI_SUFFIXES]
        found = [p for p in images if p.is_file()]
        series = folder / case_id
        if not found and series.is_dir() and dicom_files(series):
            found = [series]
        cases.append(CaseFiles(case_id, found[:1], label))
    return cases


def find_labelled_cases(
    input_dir: str | os.PathLike, label_value: int | None = None
) -> tuple[list[CaseFiles], int | None]:
    """(cases, coronary value or None for "any non-zero voxel of a binary mask") of a labelled folder."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise InputError(folder, "input folder not found")
    if is_nnunet_raw(folder):
        info = read_nnunet_info(folder)
        if label_value is None:
            label_value = coronary_value(nnunet_labels(info, folder / NNUNET_INFO), folder / NNUNET_INFO)
        return find_nnunet_cases(folder, info), label_value
    return find_own_cases(folder), label_value


# ---------------------------------------------------------------------------- one case


def coronary_mask(label: Volume, value: int | None) -> Volume:
    """The binary coronary mask (uint8) of a label map: voxels == value, or > 0 for a binary mask.

    InputError naming the label file: empty mask, value absent, several values without `value`.
    """
    array = np.rint(np.asarray(label.array)).astype(np.int64)
    present = [int(v) for v in np.unique(array) if v != 0]
    if not present:
        raise InputError(label.path, "empty coronary mask (no non-zero voxel)")
    if value is None:
        if len(present) > 1:
            raise InputError(label.path, f"holds several label values {present[:10]}; pass the coronary one: --label N")
        value = present[0]
    if value not in present:
        raise InputError(label.path, f"label value {value} not in the mask (values present: {present[:10]})")
    return Volume((array == value).astype(np.uint8), label.spacing, label.affine, label.header, label.path)


def read_labelled_case(files: CaseFiles, value: int | None) -> tuple[Volume, Volume]:
    """(image HU, binary coronary mask on the image's grid) of one case; InputError naming the file."""
    if not files.views:
        expected = "its image (imagesTr/{id}_0000, {id}.img.nii.gz or a DICOM series folder {id}/)"
        raise InputError(files.label, f"no image for this label: {expected.replace('{id}', files.case_id)} is missing")
    image = read_scan(files.views[0])
    label = read_volume(files.label, dtype=np.float32)
    check_same_grid(image, label)  # names the label: the mask lies on another grid
    return image, coronary_mask(label, value)


def process_labelled_case(
    files: CaseFiles,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float],
    overwrite: bool = False,
    orientation: str = "canonical",
    *,
    label_value: int | None = None,
) -> CaseResult:
    """Read, check, preprocess and cache one labelled scan (one view); never raises for bad input."""
    if not overwrite and is_cached(output_dir, files.case_id):
        return CaseResult(files.case_id, "skipped")

    def work() -> list[str]:
        image, mask = read_labelled_case(files, label_value)
        case = preprocess_case([image], mask, target_spacing, orientation)
        if case.properties["num_foreground_voxels"] == 0:
            raise InputError(files.label, f"the coronary mask vanishes when resampled to {list(target_spacing)} mm")
        case.properties.update(labelled=True, label_value=label_value)
        write_cached_case(output_dir, files.case_id, case)
        return []

    return cache_case(files.case_id, work)


def write_labelled_info(
    cache_dir: str | os.PathLike, target_spacing: Sequence[float], orientation: str = "canonical"
) -> dict[str, Any]:
    return write_dataset_info(cache_dir, target_spacing, source="labelled", orientation=orientation)


def preprocess_labelled_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float] = TARGET_SPACING,
    workers: int = 1,
    overwrite: bool = False,
    label_value: int | None = None,
    *,
    on_result: Callable[[CaseResult], None] | None = None,
    progress: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None,
    orientation: str = "canonical",
) -> list[CaseResult]:
    """Every labelled case of `input_dir` into the cache `output_dir` (see the module docstring)."""
    cases, value = find_labelled_cases(input_dir, label_value)
    if not cases:
        expected = (
            "imagesTr/ + labelsTr/ + dataset.json, {id}.img.nii.gz + {id}.label.nii.gz, or {id}/ + {id}.label.nii.gz"
        )
        raise InputError(input_dir, f"no labelled cases found (expected {expected})")
    return preprocess_folder(
        input_dir, output_dir, target_spacing, workers, overwrite,
        on_result=on_result, progress=progress, cases=cases,
        process=functools.partial(process_labelled_case, label_value=value), write_info=write_labelled_info,
        orientation=orientation,
    )  # fmt: skip
