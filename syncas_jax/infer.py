"""Predict coronary masks on CT volumes: `python -m syncas_jax.infer` (SPEC §6).

    python -m syncas_jax.infer -i IN -o OUT -m CHECKPOINT [--no-tta] [--save-probabilities]
                               [--step 0.5] [--batch N] [--overwrite]

IN is a NIfTI file or a folder of them (`.nii.gz` / `.nii`, hidden files and other
extensions ignored). Output names: `<x>NCCT.nii.gz` → `CA_<x>NCCT.nii.gz`, any other
file keeps its name; OUT is a folder, or for a single input file also a file name
ending in `.nii.gz`/`.nii`. CHECKPOINT is a syncas_jax checkpoint folder (from train or
convert) or a reference `.pth`, converted on the fly.

Per case: read (z, y, x) → same preprocessing as training (crop, CT window, resample
to the target spacing) → Gaussian-weighted sliding window with 8-way mirror TTA
(`syncas_jax.sliding_window`) → softmax back to the original grid (order-1
interpolation, order 0 along a separately resampled coarse axis, background outside
the crop box; nnU-Net's export) → argmax → uint8 mask written with exactly the input's
affine and header. With --save-probabilities the coronary-class probability goes to
`<output name without .nii.gz>_prob.nii.gz`: float32 in [0, 1], same grid, affine and
header (written before the mask, so an existing mask marks a finished case).

Target spacing and patch size come from the checkpoint's training config; checkpoints
without one (converted reference weights) use SPEC's (3.0, 0.349609375, 0.349609375) mm
and (32, 224, 224); --spacing/--patch-size override either.

Cases whose output exists are skipped unless --overwrite. A failing case (unreadable,
not 3D, ...) is reported on one line naming the file and the others go on; the exit
status is 1 if any case failed, 2 for an unusable input folder or checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from syncas_jax import io
from syncas_jax.console import guarded, progress
from syncas_jax.predict import PRECISIONS, Prediction, inference_settings, load_model_for_inference, predict_volume
from syncas_jax.sliding_window import PredictFn

PROBABILITY_SUFFIX = "_prob"


# ------------------------------------------------------------------------------- files


def output_name(input_name: str) -> str:
    """`<x>NCCT.nii.gz` → `CA_<x>NCCT.nii.gz` (also for .nii); any other name is kept."""
    return f"CA_{input_name}" if io.strip_nifti_suffix(input_name).endswith("NCCT") else input_name


def probability_path(output: Path) -> Path:
    """`<dir>/<stem>.nii.gz` → `<dir>/<stem>_prob.nii.gz` (same extension as the mask)."""
    stem = io.strip_nifti_suffix(output.name)
    return output.with_name(f"{stem}{PROBABILITY_SUFFIX}{output.name[len(stem) :]}")


def find_inputs(input_path: Path) -> list[Path]:
    """The input file, or the NIfTI files of a folder (sorted, hidden files skipped)."""
    if not input_path.exists():
        raise io.InputError(input_path, "input not found")
    if not input_path.is_dir():
        return [input_path]
    files = sorted(
        p
        for p in input_path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(io.NIFTI_SUFFIXES)
    )
    if not files:
        raise io.InputError(input_path, "no NIfTI files (.nii.gz or .nii) in the input folder")
    return files


def plan_outputs(inputs: list[Path], input_path: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs. A file input with an OUT ending in .nii.gz/.nii writes exactly there."""
    if not input_path.is_dir() and output.name.endswith(io.NIFTI_SUFFIXES):
        return [(inputs[0], output)]
    if output.exists() and not output.is_dir():
        raise io.InputError(output, "output exists and is not a folder")
    return [(path, output / output_name(path.name)) for path in inputs]


def _note(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def _window_progress(name: str) -> Callable[[Iterable[Any], int], Iterable[Any]]:
    return lambda items, total: progress(items, f"{name} windows", total=total)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.infer",
        description="Segment coronary arteries on CT volumes with a trained SynCAS network (sliding window, "
        "Gaussian weighting, mirror TTA) and write uint8 NIfTI masks in each input's geometry.",
    )
    parser.add_argument("-i", "--input", type=Path, required=True, help="NIfTI file or folder of NIfTI files")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (or, for one input file, a .nii.gz path)"
    )
    parser.add_argument(
        "-m", "--model", type=Path, required=True, help="checkpoint folder (train/convert) or reference .pth"
    )
    parser.add_argument("--no-tta", action="store_true", help="no mirror test-time augmentation (8x faster)")
    parser.add_argument(
        "--save-probabilities", action="store_true", help="also write <name>_prob.nii.gz (float32 coronary probability)"
    )
    parser.add_argument("--step", type=float, default=0.5, help="window step as a fraction of the patch (0, 1]")
    parser.add_argument("--batch", type=int, default=1, help="windows per network call")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="target spacing in mm")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="window size in voxels")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="compute precision (auto: bfloat16 on TPU, else float32)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.step <= 1:
        parser.error(f"--step must be in (0, 1], got {args.step}")
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    return args


def _case_done(output: Path, probabilities: bool) -> bool:
    return output.exists() and (not probabilities or probability_path(output).exists())


def read_input(path: Path) -> io.Volume:
    """io.read_volume (float32), with a clear message for 4D images that io cannot squeeze to 3D."""
    try:
        return io.read_volume(path, dtype=np.float32)
    except ValueError:  # io.read_volume's np.squeeze fails on a 4th axis longer than 1
        import nibabel as nib

        shape = tuple(nib.load(str(path)).shape)
        raise io.InputError(path, f"expected a 3D image, got {len(shape)}D with shape {shape}") from None


def run_case(
    source: Path,
    output: Path,
    predict_fn: PredictFn,
    *,
    probabilities: bool,
    progress_fn: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
    **settings: Any,
) -> Prediction:
    """Read one file, predict it and write the mask (and probability map) atomically."""
    if source.resolve() == output.resolve() or (
        probabilities and source.resolve() == probability_path(output).resolve()
    ):
        raise io.InputError(source, "the output would overwrite this input; choose another output folder")
    volume = read_input(source)
    prediction = predict_volume(volume, predict_fn, probabilities=probabilities, progress=progress_fn, **settings)
    if prediction.probability is not None:
        io.write_volume(prediction.probability, probability_path(output), like=volume, dtype=np.float32)
    io.write_volume(prediction.segmentation, output, like=volume, dtype=np.uint8)
    return prediction


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = find_inputs(args.input)
    pairs = plan_outputs(inputs, args.input, args.output)
    todo = [(s, o) for s, o in pairs if args.overwrite or not _case_done(o, args.save_probabilities)]
    skipped = len(pairs) - len(todo)
    if skipped:
        _note(f"skipping {skipped} case(s) already predicted (use --overwrite to redo)")
    if not todo:
        print(f"nothing to do: all {len(pairs)} case(s) already predicted in {args.output}")
        return 0

    predict_fn, meta = load_model_for_inference(args.model, precision=args.precision)
    try:
        spacing, patch_size = inference_settings(meta, args.spacing, args.patch_size)
    except ValueError as error:
        raise io.InputError(args.model, str(error)) from None
    settings = {
        "spacing": spacing,
        "patch_size": patch_size,
        "step": args.step,
        "tta": not args.no_tta,
        "batch": args.batch,
    }
    failed = 0
    for source, output in progress(todo, "cases"):
        try:
            run_case(
                source,
                output,
                predict_fn,
                probabilities=args.save_probabilities,
                progress_fn=_window_progress(source.name),
                **settings,
            )
        except io.InputError as error:
            failed += 1
            _note(f"error: {error}")
        except Exception as error:  # keep going; name the file and the unexpected error
            failed += 1
            _note(f"error: {source}: unexpected {type(error).__name__}: {error}")
    done = len(todo) - failed
    print(f"predicted {done} case(s), skipped {skipped}, failed {failed}; outputs in {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
