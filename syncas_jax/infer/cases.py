"""Inference on files: which inputs, which output names, and one case from file to written mask.

Output names: `<x>NCCT.nii.gz` → `CA_<x>NCCT.nii.gz`, any other file keeps its name; with
probabilities, `<output stem>_prob.nii.gz` (written before the mask, so an existing mask marks
a finished case).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import NIFTI_SUFFIXES, Volume, read_volume, strip_nifti_suffix, write_volume
from syncas_jax.data.layout import PATCH_SIZE, TARGET_SPACING
from syncas_jax.data.volume import Prediction, predict_volume
from syncas_jax.nets.sliding_window import PredictFn, ProgressFn, predict_sliding_window

PROBABILITY_SUFFIX = "_prob"


def output_name(input_name: str) -> str:
    """`<x>NCCT.nii.gz` → `CA_<x>NCCT.nii.gz` (also for .nii); any other name is kept."""
    return f"CA_{input_name}" if strip_nifti_suffix(input_name).endswith("NCCT") else input_name


def probability_path(output: Path) -> Path:
    """`<dir>/<stem>.nii.gz` → `<dir>/<stem>_prob.nii.gz` (same extension as the mask)."""
    stem = strip_nifti_suffix(output.name)
    return output.with_name(f"{stem}{PROBABILITY_SUFFIX}{output.name[len(stem) :]}")


def find_inputs(input_path: Path) -> list[Path]:
    """The input file, or the NIfTI files of a folder (sorted, hidden files skipped)."""
    if not input_path.exists():
        raise InputError(input_path, "input not found")
    if not input_path.is_dir():
        return [input_path]
    files = sorted(
        p
        for p in input_path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES)
    )
    if not files:
        raise InputError(input_path, "no NIfTI files (.nii.gz or .nii) in the input folder")
    return files


def plan_outputs(inputs: list[Path], input_path: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs. A file input with an OUT ending in .nii.gz/.nii writes exactly there."""
    if not input_path.is_dir() and output.name.endswith(NIFTI_SUFFIXES):
        return [(inputs[0], output)]
    if output.exists() and not output.is_dir():
        raise InputError(output, "output exists and is not a folder")
    return [(path, output / output_name(path.name)) for path in inputs]


def case_done(output: Path, probabilities: bool) -> bool:
    return output.exists() and (not probabilities or probability_path(output).exists())


def read_input(path: Path) -> Volume:
    """read_volume (float32), with a clear message for 4D images that io cannot squeeze to 3D."""
    try:
        return read_volume(path, dtype=np.float32)
    except ValueError:  # read_volume's np.squeeze fails on a 4th axis longer than 1
        import nibabel as nib

        shape = tuple(nib.load(str(path)).shape)
        raise InputError(path, f"expected a 3D image, got {len(shape)}D with shape {shape}") from None


@dataclass(frozen=True)
class WindowSettings:
    """How the sliding window runs: target spacing (z, y, x) mm, window (z, y, x) voxels, step as a
    fraction of the window, 8-way mirror TTA, windows per network call."""

    spacing: tuple[float, float, float] = TARGET_SPACING
    patch_size: tuple[int, int, int] = PATCH_SIZE
    step: float = 0.5
    tta: bool = True
    batch: int = 1


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
    return predict_volume(volume, predict_image, spacing=settings.spacing, probabilities=probabilities)


def run_case(
    source: Path,
    output: Path,
    predict_fn: PredictFn,
    settings: WindowSettings = WindowSettings(),
    *,
    probabilities: bool = False,
    progress: ProgressFn | None = None,
) -> Prediction:
    """Read one file, predict it and write the mask (and probability map) atomically."""
    if source.resolve() == output.resolve() or (
        probabilities and source.resolve() == probability_path(output).resolve()
    ):
        raise InputError(source, "the output would overwrite this input; choose another output folder")
    volume = read_input(source)
    prediction = predict_case(volume, predict_fn, settings, probabilities=probabilities, progress=progress)
    if prediction.probability is not None:
        write_volume(prediction.probability, probability_path(output), like=volume, dtype=np.float32)
    write_volume(prediction.segmentation, output, like=volume, dtype=np.uint8)
    return prediction
