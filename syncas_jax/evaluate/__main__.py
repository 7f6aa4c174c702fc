"""Evaluate predicted coronary masks against reference masks: `python -m syncas_jax.evaluate`.

    python -m syncas_jax.evaluate --pred PRED_DIR --ref REF_DIR [--image CT_DIR] [-o report]

Writes REPORT/metrics.csv (one row per case, then mean and std rows), REPORT/metrics.json
(per case, failures, mean/std/n per metric) and REPORT/overlays/{case}.png, and prints a
table. Metric definitions and empty-mask conventions: `syncas_jax.metrics`.

Pairing rule (which prediction and CT image go with which reference): `syncas_jax.evaluate.pairing`.

A failed case (missing prediction or image, unreadable file, shape or affine mismatch)
is reported on one line naming the file; the other cases go on, and the exit status is
1 if any case failed (2 for an unusable folder).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from syncas_jax import metrics
from syncas_jax.common.console import guarded, progress
from syncas_jax.common.errors import InputError
from syncas_jax.evaluate.pairing import pair_cases
from syncas_jax.evaluate.report import evaluate_case, format_table, write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.evaluate",
        description="Per-case and mean ± std metrics of predicted coronary masks against reference masks: "
        "Dice, IoU, precision, recall, specificity, F1, TP/FP/FN/TN, HD95 and MSD in mm, clDice, "
        "and Agatston scores when CT images are given.",
        epilog="Pairing: for reference S.nii.gz (id I = S without '.label', core C = I without 'CA_') the "
        "prediction is the first of S, I, I.label, I.img, CA_I, C, CA_C found in --pred; the image is the "
        "first of I.img, I, C.img, C, S in --image. Foreground = value > 0. Exit status 1 if any case failed.",
    )
    parser.add_argument("--pred", required=True, help="folder of predicted masks (NIfTI)")
    parser.add_argument("--ref", required=True, help="folder of reference masks (NIfTI)")
    parser.add_argument("--image", help="folder of CT images in HU, for Agatston scores (optional)")
    parser.add_argument("-o", "--output", default="report", help="report folder (default: ./report)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNG per case")
    return parser


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = pair_cases(args.ref, args.pred, args.image)
    out_dir = Path(args.output)
    for case in progress(cases, "evaluating"):
        if case.error is None:
            try:
                overlay = None if args.no_overlays else out_dir / "overlays" / f"{case.name}.png"
                case.metrics = evaluate_case(case, overlay)
            except InputError as error:
                case.error = str(error)
            except Exception as error:  # one broken case must not stop the others
                case.error = f"{case.pred}: {type(error).__name__}: {error}"
    for case in cases:
        if case.error is not None:
            print(f"error: {case.error}", file=sys.stderr)
    summary = metrics.summarize([c.metrics for c in cases if c.error is None])
    write_report(out_dir, cases, summary)
    print(format_table(cases, summary))
    failed = sum(c.error is not None for c in cases)
    print(f"{len(cases) - failed} case(s) evaluated, {failed} failed; report in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
