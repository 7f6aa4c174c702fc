"""Predict coronary masks on CT volumes: `python -m syncas_jax.infer` (design §6).

    python -m syncas_jax.infer -i IN -o OUT -m CHECKPOINT [--no-tta | --fast] [--save-probabilities]
                               [--report] [--dicom-seg] [--step 0.5] [--batch N] [--overwrite]

IN is a NIfTI file, a DICOM series folder, or a folder of NIfTI files (`.nii.gz` / `.nii`,
hidden files and other extensions ignored) and/or series folders (at any depth; any file
names, any order). Output names: `<x>NCCT.nii.gz` → `CA_<x>NCCT.nii.gz`, any other file
keeps its name, a series folder S → `CA_S.nii.gz` (in dcm2niix's geometry for the series);
OUT is a folder, or for a single input also a file name ending in `.nii.gz`/`.nii`.
CHECKPOINT is a syncas_jax checkpoint folder (from train or convert) or a reference `.pth`,
converted on the fly.

Per case: read (z, y, x) → reorient to the canonical axes (axial slices, LPS; the network
never sees a mirrored or transposed scan because of how the file was written) → same
preprocessing as training (crop, CT window, resample to the target spacing) →
Gaussian-weighted sliding window with 8-way mirror TTA
(`syncas_jax.nets.sliding_window`) → softmax back to the original grid (order-1
interpolation, order 0 along a separately resampled coarse axis, background outside
the crop box; nnU-Net's export) → argmax → back to the file's axes → uint8 mask written
with exactly the input's affine, header and layout. With --save-probabilities the
coronary-class probability goes to `<output stem>_prob.nii.gz`: float32 in [0, 1], same
grid, affine and header. --report writes the calcium report of the scan inside the
predicted mask (`<output stem>_calcium.json/.csv/.png`, see `python -m syncas_jax.calcium`);
--arteries writes the mask's artery map (`<output stem>_arteries.nii.gz`, LM 1, LAD 2, LCX 3,
RCA 4, other 5; `syncas_jax.calcium.arteries`), the one the report's per-artery table uses;
--dicom-seg writes `<output stem>.seg.dcm`, a DICOM Segmentation referencing the source
series (series inputs only). Extras are written before the mask, so an existing mask
marks a finished case.

--fast is the laptop preset: no mirror TTA and a window step of 0.75 of the patch instead of
0.5 (about half the windows of a chest CT; windows overlap less, so the Gaussian weighting blends
less at their borders). --step overrides its step. A checkpoint trained without mirror
augmentation (`"augmentated": false`, as the demo's) is not mirror-invariant: TTA averages in
flipped predictions it was never trained for, so --no-tta or --fast is the better choice there,
and a note says so.

Orientation: by default the one the checkpoint was trained in. Ours turn every scan to LPS first
(design §11); the reference's weights (a .pth, or its conversion) were trained on arrays in each
file's own axis order, and get them so (--keep-orientation / --reorient override; design §12).

Target spacing and patch size come from the checkpoint's training config; checkpoints
without one (converted reference weights) use the reference's (3.0, 0.349609375, 0.349609375) mm
and (32, 224, 224); --spacing/--patch-size override either.

Cases whose outputs exist are skipped unless --overwrite. A failing case (unreadable,
not 3D, a DICOM folder with several series, missing slices, gantry tilt, not CT, pixel
data without a decoder, ...) is reported on one line naming the file or folder and the
others go on; the exit status is 1 if any case failed, 2 for an unusable input folder or
checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from syncas_jax.common.console import guarded, note, progress
from syncas_jax.common.errors import InputError
from syncas_jax.common.precision import PRECISIONS
from syncas_jax.data.orientation import checkpoint_orientation
from syncas_jax.infer.cases import (
    DEFAULT_STEP,
    FAST_STEP,
    WindowSettings,
    case_done,
    find_inputs,
    plan_outputs,
    run_case,
)
from syncas_jax.infer.predict import inference_settings, load_model_for_inference


def _window_progress(name: str) -> Callable[[Iterable[Any], int], Iterable[Any]]:
    return lambda items, total: progress(items, f"{name} windows", total=total)


def trained_without_mirroring(meta: dict[str, Any]) -> bool:
    """Whether the checkpoint's training config switched augmentation (mirroring included) off."""
    config = meta.get("config")
    return isinstance(config, dict) and config.get("augmentated") is False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.infer",
        description="Segment coronary arteries on CT volumes with a trained SynCAS network (sliding window, "
        "Gaussian weighting, mirror TTA) and write uint8 NIfTI masks in each input's geometry.",
    )
    parser.add_argument(
        "-i", "--input", type=Path, required=True, help="NIfTI file, DICOM series folder, or a folder of either"
    )
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
    parser.add_argument(
        "--report", action="store_true",
        help="also write the calcium report (<name>_calcium.json/.csv/.png): per artery, CAC-DRS",
    )  # fmt: skip
    parser.add_argument(
        "--arteries", action="store_true",
        help="also write the mask's artery map <name>_arteries.nii.gz (LM 1, LAD 2, LCX 3, RCA 4, other 5)",
    )  # fmt: skip
    parser.add_argument(
        "--dicom-seg", action="store_true", help="DICOM series inputs: also write <name>.seg.dcm (DICOM SEG)"
    )
    parser.add_argument(
        "--fast", action="store_true", help=f"laptop preset: no TTA, window step {FAST_STEP} (about half the windows)"
    )
    parser.add_argument(
        "--step", type=float, default=None, help=f"window step, a fraction of the patch (0, 1]; default {DEFAULT_STEP}"
    )
    parser.add_argument("--batch", type=int, default=1, help="windows per network call")
    orientation = parser.add_mutually_exclusive_group()
    orientation.add_argument(
        "--keep-orientation",
        action="store_true",
        help="show the network each file in its own axis order, as the reference's weights were trained "
        "(the default for a reference .pth or a checkpoint trained with --keep-orientation)",
    )
    orientation.add_argument(
        "--reorient",
        action="store_true",
        help="turn every scan to LPS first (the default for our checkpoints)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="target spacing in mm")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="window size in voxels")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="compute precision (auto: bfloat16 on TPU, else float32)",
    )
    args = parser.parse_args(argv)
    if args.step is None:
        args.step = FAST_STEP if args.fast else DEFAULT_STEP
    args.tta = not (args.no_tta or args.fast)
    if not 0 < args.step <= 1:
        parser.error(f"--step must be in (0, 1], got {args.step}")
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    return args


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = find_inputs(args.input)
    pairs = plan_outputs(inputs, args.input, args.output)
    extras = {"probabilities": args.save_probabilities, "report": args.report, "dicom_seg": args.dicom_seg,
              "arteries": args.arteries}  # fmt: skip
    todo = [(s, o) for s, o in pairs if args.overwrite or not case_done(o, source=s, **extras)]
    if args.dicom_seg and any(not s.is_dir() for s, _ in todo):
        note("--dicom-seg: NIfTI inputs get a NIfTI mask only (a DICOM SEG needs the source series)")
    skipped = len(pairs) - len(todo)
    if skipped:
        note(f"skipping {skipped} case(s) already predicted (use --overwrite to redo)")
    if not todo:
        print(f"nothing to do: all {len(pairs)} case(s) already predicted in {args.output}")
        return 0

    predict_fn, meta = load_model_for_inference(args.model, precision=args.precision)
    try:
        spacing, patch_size = inference_settings(meta, args.spacing, args.patch_size)
    except ValueError as error:
        raise InputError(args.model, str(error)) from None
    if args.tta and trained_without_mirroring(meta):
        note(
            f"{args.model} was trained without mirror augmentation, so mirror TTA is likely to lower its "
            "accuracy (--no-tta or --fast avoid it)"
        )
    orientation = "file" if args.keep_orientation else "canonical" if args.reorient else checkpoint_orientation(meta)
    if orientation == "file":
        note("orientation: each scan in its file's own axis order (the checkpoint's convention; --reorient for LPS)")
    settings = WindowSettings(spacing, patch_size, args.step, args.tta, args.batch, orientation)
    failed = 0
    for source, output in progress(todo, "cases"):
        try:
            run_case(
                source,
                output,
                predict_fn,
                settings,
                **extras,
                progress=_window_progress(source.name),
            )
        except InputError as error:
            failed += 1
            note(f"error: {error}")
        except Exception as error:  # keep going; name the file and the unexpected error
            failed += 1
            note(f"error: {source}: unexpected {type(error).__name__}: {error}")
    done = len(todo) - failed
    print(f"predicted {done} case(s), skipped {skipped}, failed {failed}; outputs in {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
