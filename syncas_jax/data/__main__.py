"""`python -m syncas_jax.preprocess -i SYNTH_DIR -o CACHE_DIR`: build the training cache (also `-m syncas_jax.data`).

Reads the synth output (per case ``{id}.view{k}.img.nii.gz`` + ``{id}.label.nii.gz``,
or an ImageCAS-style ``{id}.img.nii.gz``), crops, windows, resamples to the target
spacing and stores memory-mappable arrays, branch labels, foreground locations and
undo properties per case (layout: `syncas_jax.data.layout`). Finished cases are
skipped on re-runs; a bad case is reported and skipped; the exit status is 1 when any
case failed, 2 on unusable arguments or folders.

`--cta` builds the CTA cache for online synthesis instead (`syncas_jax.data.cta_cache`): the
input is what `synth` takes (``{id}.img.nii.gz`` CTA + ``{id}.label.nii.gz`` label map).

`--labelled` builds a cache of labelled real NCCT for fine-tuning (`syncas_jax.data.labelled`):
nnU-Net's raw layout (``dataset.json``, ``imagesTr/{id}_0000.nii.gz``, ``labelsTr/{id}.nii.gz``),
``{id}.img.nii.gz`` + ``{id}.label.nii.gz``, or DICOM series folders ``{id}/`` + ``{id}.label.nii.gz``;
`--label N` picks the coronary value of a multi-label mask.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from syncas_jax.common.console import guarded, note, progress
from syncas_jax.data.cache import CaseResult, preprocess_folder
from syncas_jax.data.layout import TARGET_SPACING
from syncas_jax.synth.hu_table import TABLES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.preprocess",
        description="Preprocess synthetic NCCT cases (or, with --cta, CTA cases) into a memory-mapped training cache.",
    )
    parser.add_argument(
        "-i", "--input", required=True, help="folder with {id}.view{k}.img.nii.gz and {id}.label.nii.gz"
    )
    parser.add_argument(
        "--cta",
        action="store_true",
        help="build a CTA cache for online synthesis from {id}.img.nii.gz CTA + {id}.label.nii.gz label maps",
    )
    parser.add_argument(
        "--labelled",
        action="store_true",
        help="labelled real NCCT for fine-tuning: nnU-Net raw layout (dataset.json, imagesTr/, labelsTr/), "
        "{id}.img.nii.gz + {id}.label.nii.gz, or DICOM series folders {id}/ + {id}.label.nii.gz",
    )
    parser.add_argument(
        "--label",
        type=int,
        metavar="N",
        help="with --labelled: the coronary value of a multi-label mask (default: dataset.json's coronary label, "
        "else the mask's only non-zero value)",
    )
    parser.add_argument(
        "--hu-table", choices=sorted(TABLES), default="reference", help="label→HU table of a CTA cache (with --cta)"
    )
    parser.add_argument("-o", "--output", required=True, help="cache folder to create or complete")
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=list(TARGET_SPACING),
        help="target voxel spacing in mm (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-orientation",
        action="store_true",
        help="keep each file's own axis order (the reference's convention, for fine-tuning its weights in it; "
        "train with --keep-orientation too); the default turns every case to LPS first",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes over cases (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already in the cache")
    return parser


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.spacing) <= 0:
        build_parser().error("--spacing values must be positive")
    workers = max(1, args.workers)
    if args.cta and args.labelled:
        build_parser().error("--cta and --labelled build different caches; choose one")
    if args.label is not None and not args.labelled:
        build_parser().error("--label applies to --labelled")
    if args.cta and args.keep_orientation:
        build_parser().error("--keep-orientation applies to NCCT caches (online synthesis trains in LPS)")
    orientation = "file" if args.keep_orientation else "canonical"
    if args.labelled:
        from syncas_jax.data.labelled import preprocess_labelled_folder

        results = preprocess_labelled_folder(
            args.input, args.output, args.spacing, workers, args.overwrite, args.label,
            on_result=report, progress=progress, orientation=orientation,
        )  # fmt: skip
    elif args.cta:
        from syncas_jax.data.cta_cache import preprocess_cta_folder

        results = preprocess_cta_folder(
            args.input, args.output, args.spacing, workers, args.overwrite, args.hu_table,
            on_result=report, progress=progress,
        )  # fmt: skip
    else:
        results = preprocess_folder(
            args.input,
            args.output,
            args.spacing,
            workers=workers,
            overwrite=args.overwrite,
            on_result=report,
            progress=progress,
            orientation=orientation,
        )
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"preprocessed {counts['done']}, skipped {counts['skipped']} (already cached), failed {counts['failed']}")
    for result in results:
        if result.status == "failed":
            print(f"  failed {result.case_id}: {result.message}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def report(result: CaseResult) -> None:
    """Warnings and failures of one case as they happen, one line each."""
    for warning in result.warnings:
        note(f"warning: {warning}")
    if result.status == "failed":
        note(f"error: case {result.case_id}: {result.message}")


if __name__ == "__main__":
    sys.exit(main())
