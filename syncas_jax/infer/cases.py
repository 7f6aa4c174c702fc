"""Inference on files: which inputs, which output names, and one case from file to written mask.

Inputs: NIfTI files and DICOM series folders (`syncas_jax.common.dicom`). Output names:
`<x>NCCT.nii.gz` → `CA_<x>NCCT.nii.gz`, any other file keeps its name; a series folder S gives
`CA_S.nii.gz` (a series deeper below the input folder: its relative path joined by "_"). Beside
the mask, on request: `<output stem>_prob.nii.gz` (probabilities), `<output stem>_calcium.json`
/ `.csv` / `.png` (calcium report), `<output stem>.seg.dcm` (DICOM SEG, series inputs only).
All are written before the mask, so an existing mask marks a finished case.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from syncas_jax import __version__
from syncas_jax.calcium.arteries import label_arteries
from syncas_jax.calcium.report import report_paths, scan_calcium, write_calcium_report
from syncas_jax.common.dicom import DicomSeries, find_series_folders, read_dicom_series
from syncas_jax.common.dicom_seg import write_dicom_seg
from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import NIFTI_SUFFIXES, Volume, read_volume, strip_nifti_suffix, write_volume
from syncas_jax.data.layout import PATCH_SIZE, TARGET_SPACING
from syncas_jax.data.orientation import to_canonical
from syncas_jax.data.volume import Prediction, predict_volume
from syncas_jax.nets.sliding_window import PredictFn, ProgressFn, predict_sliding_window

PROBABILITY_SUFFIX = "_prob"
SEG_SUFFIX = ".seg.dcm"
ARTERIES_OUTPUT_SUFFIX = "_arteries"


def output_name(input_name: str) -> str:
    """`<x>NCCT.nii.gz` → `CA_<x>NCCT.nii.gz` (also for .nii); any other name is kept."""
    return f"CA_{input_name}" if strip_nifti_suffix(input_name).endswith("NCCT") else input_name


def probability_path(output: Path) -> Path:
    """`<dir>/<stem>.nii.gz` → `<dir>/<stem>_prob.nii.gz` (same extension as the mask)."""
    stem = strip_nifti_suffix(output.name)
    return output.with_name(f"{stem}{PROBABILITY_SUFFIX}{output.name[len(stem) :]}")


def seg_path(output: Path) -> Path:
    """`<dir>/<stem>.nii.gz` → `<dir>/<stem>.seg.dcm`."""
    return output.with_name(strip_nifti_suffix(output.name) + SEG_SUFFIX)


def arteries_path(output: Path) -> Path:
    """`<dir>/<stem>.nii.gz` → `<dir>/<stem>_arteries.nii.gz` (same extension as the mask)."""
    stem = strip_nifti_suffix(output.name)
    return output.with_name(f"{stem}{ARTERIES_OUTPUT_SUFFIX}{output.name[len(stem) :]}")


def artery_volume(mask: Volume) -> Volume:
    """The artery map (`syncas_jax.common.arteries` ids) of a coronary mask, in the mask's own file geometry."""
    canonical, move = to_canonical(mask)
    labelled = label_arteries(np.asarray(canonical.array) > 0, canonical.spacing)
    return Volume(np.ascontiguousarray(move.undo(labelled)), mask.spacing, mask.affine, mask.header, mask.path)


def report_stem(output: Path) -> Path:
    """The stem beside which the calcium report goes (`syncas_jax.calcium.report.report_paths`)."""
    return output.with_name(strip_nifti_suffix(output.name))


def find_inputs(input_path: Path) -> list[Path]:
    """The input file; a DICOM series folder; or a folder's NIfTI files and the series folders below it (sorted)."""
    if not input_path.exists():
        raise InputError(input_path, "input not found")
    if not input_path.is_dir():
        return [input_path]
    series = find_series_folders(input_path)
    if series == [input_path]:
        return series
    files = sorted(
        p
        for p in input_path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES)
    )
    if not files and not series:
        raise InputError(input_path, "no NIfTI files (.nii.gz or .nii) or DICOM series in the input folder")
    return files + series


def series_output_name(folder: Path, input_path: Path) -> str:
    """`CA_<series folder>.nii.gz`; below the input folder, the relative path joined by "_"."""
    parts = (folder.name,) if folder == input_path else folder.relative_to(input_path).parts
    return f"CA_{'_'.join(parts)}.nii.gz"


def plan_outputs(inputs: list[Path], input_path: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs. A single file or series input with an OUT ending in .nii.gz/.nii writes exactly there."""
    if inputs == [input_path] and output.name.endswith(NIFTI_SUFFIXES):
        return [(inputs[0], output)]
    if output.exists() and not output.is_dir():
        raise InputError(output, "output exists and is not a folder")
    inside = output.resolve()  # series folders in the output folder: a previous run's DICOM SEG files
    inputs = [p for p in inputs if not (p.is_dir() and (p.resolve() == inside or inside in p.resolve().parents))]
    return [
        (path, output / (series_output_name(path, input_path) if path.is_dir() else output_name(path.name)))
        for path in inputs
    ]


def case_outputs(
    source: Path,
    output: Path,
    probabilities: bool = False,
    report: bool = False,
    dicom_seg: bool = False,
    arteries: bool = False,
) -> list[Path]:
    """Every file a case writes, the mask last. The DICOM SEG only for a series input."""
    paths = [probability_path(output)] if probabilities else []
    paths += [arteries_path(output)] if arteries else []
    if report:
        paths += list(report_paths(report_stem(output)).values())
    if dicom_seg and source.is_dir():
        paths.append(seg_path(output))
    return [*paths, output]


def case_done(
    output: Path,
    probabilities: bool,
    report: bool = False,
    dicom_seg: bool = False,
    source: Path | None = None,
    arteries: bool = False,
) -> bool:
    """True when the mask and every other requested output of the case exist."""
    outputs = case_outputs(source or output, output, probabilities, report, dicom_seg, arteries)
    return all(p.exists() for p in outputs)


def read_input(path: Path) -> tuple[Volume, DicomSeries | None]:
    """A DICOM series folder (volume and series) or a NIfTI file (float32 volume, no series).

    A clear message for 4D images that io cannot squeeze to 3D.
    """
    if path.is_dir():
        series = read_dicom_series(path)
        return series.volume, series
    try:
        return read_volume(path, dtype=np.float32), None
    except ValueError:  # read_volume's np.squeeze fails on a 4th axis longer than 1
        import nibabel as nib

        shape = tuple(nib.load(str(path)).shape)
        raise InputError(path, f"expected a 3D image, got {len(shape)}D with shape {shape}") from None


DEFAULT_STEP = 0.5  # nnU-Net's window step, a fraction of the patch
FAST_STEP = 0.75  # infer --fast


@dataclass(frozen=True)
class WindowSettings:
    """How the sliding window runs: target spacing (z, y, x) mm, window (z, y, x) voxels, step as a
    fraction of the window, 8-way mirror TTA, windows per network call, and the orientation the network
    sees ("canonical" or "file": the checkpoint's convention, `data.orientation.checkpoint_orientation`)."""

    spacing: tuple[float, float, float] = TARGET_SPACING
    patch_size: tuple[int, int, int] = PATCH_SIZE
    step: float = DEFAULT_STEP
    tta: bool = True
    batch: int = 1
    orientation: str = "canonical"


def predict_case(
    volume: Volume,
    predict_fn: PredictFn,
    settings: WindowSettings = WindowSettings(),
    *,
    probabilities: bool = False,
    progress: ProgressFn | None = None,
) -> Prediction:
    """Segment one CT volume (HU, (z, y, x)) with the sliding window; the result lies on the volume's grid."""
    predict_image = functools.partial(
        predict_sliding_window,
        predict_fn=predict_fn,
        patch_size=settings.patch_size,
        step=settings.step,
        tta=settings.tta,
        batch=settings.batch,
        progress=progress,
    )
    return predict_volume(
        volume, predict_image, spacing=settings.spacing, probabilities=probabilities, orientation=settings.orientation
    )


def run_case(
    source: Path,
    output: Path,
    predict_fn: PredictFn,
    settings: WindowSettings = WindowSettings(),
    *,
    probabilities: bool = False,
    report: bool = False,
    dicom_seg: bool = False,
    arteries: bool = False,
    progress: ProgressFn | None = None,
) -> Prediction:
    """Read one file or series, predict it and write the mask (and the requested extras) atomically, mask last.

    report: the calcium report of the scan found through the predicted mask, per artery; dicom_seg: a DICOM SEG
    of the mask referencing the source series (series inputs only); arteries: the mask's artery map
    (`<stem>_arteries.nii.gz`: LM 1, LAD 2, LCX 3, RCA 4, other 5), the one the report uses.
    """
    outputs = case_outputs(source, output, probabilities, report, dicom_seg, arteries)
    if source.resolve() in {p.resolve() for p in outputs} or (
        source.is_dir() and any(source.resolve() in p.resolve().parents for p in outputs)
    ):
        raise InputError(source, "the output would overwrite this input; choose another output folder")
    volume, series = read_input(source)
    prediction = predict_case(volume, predict_fn, settings, probabilities=probabilities, progress=progress)
    if prediction.probability is not None:
        write_volume(prediction.probability, probability_path(output), like=volume, dtype=np.float32)
    mask = Volume(prediction.segmentation, volume.spacing, volume.affine, volume.header, str(output))
    artery_map = artery_volume(mask) if report or arteries else None
    if arteries:
        write_volume(artery_map.array, arteries_path(output), like=volume, dtype=np.uint8)
    if report:
        write_calcium_report(scan_calcium(volume, mask, artery_map), report_stem(output))
    if dicom_seg and series is not None:
        write_dicom_seg(prediction.segmentation, series, seg_path(output), software_version=__version__)
    write_volume(prediction.segmentation, output, like=volume, dtype=np.uint8)
    return prediction
