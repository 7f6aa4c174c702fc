"""Coronary calcium report of a CT scan inside a coronary mask: `python -m syncas_jax.calcium`.

    python -m syncas_jax.calcium --image SCAN --mask MASK -o OUT [--arteries MAP] [--no-preview]

SCAN: a CT in HU, a NIfTI file or a DICOM series folder. MASK: a NIfTI coronary mask on the
same grid (ours from `infer`, a reference one, a hand-drawn one; coronary = value > 0). MAP: the
artery of each mask voxel (LM 1, LAD 2, LCX 3, RCA 4; `infer --arteries` writes one); without it
the mask is labelled geometrically (`syncas_jax.calcium.arteries`). Writes
OUT/<mask name>_calcium.json (agatston, volume_mm3, lesion_count, risk_category, cac_drs, per
artery, lesions, excluded), OUT/<mask name>_calcium.csv (the lesion table) and
OUT/<mask name>_calcium.png (a preview), and prints one summary line. Definitions:
`syncas_jax.metrics.calcium`. Exit status 2 with one line naming the file for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from syncas_jax.common.console import guarded
from syncas_jax.common.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.calcium",
        description="Agatston score, volume score, lesion count, risk category and lesion table of the calcium "
        "inside a coronary mask, as JSON, CSV and a preview PNG.",
        epilog="A lesion: per axial slice, an 8-connected component >= 130 HU within 3 mm (in-plane) of the mask "
        "that touches the mask, scored whole: area (>= 1 mm^2) x weight 1-4 (peak HU <200, <300, <400, >=400) x "
        "slice spacing / 3 mm. Left out: components of bright structures lying mostly (> 25%) beyond the 3 mm "
        "margin (ribs, sternum, spine, aortic wall). Volume score: mm^3 of the lesion voxels. Risk category: 0, "
        "1-99, 100-399, >=400. CAC-DRS: A0, A1 (1-99), A2 (100-299), A3 (>=300), /N = arteries with calcium.",
    )
    parser.add_argument("--image", type=Path, required=True, help="CT scan in HU: NIfTI file or DICOM series folder")
    parser.add_argument("--mask", type=Path, required=True, help="coronary mask (NIfTI, value > 0) on the scan's grid")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--arteries", type=Path, help="artery map (NIfTI, LM 1 LAD 2 LCX 3 RCA 4) on the scan's grid; "
                        "default: labelled from the mask's geometry")
    parser.add_argument("--no-preview", action="store_true", help="skip the preview PNG")
    return parser


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from syncas_jax.calcium.report import scan_calcium, summary_line, write_calcium_report
    from syncas_jax.common.dicom import read_scan
    from syncas_jax.common.nifti import read_volume, strip_nifti_suffix

    if args.mask.is_dir():
        raise InputError(args.mask, "is a folder; expected a NIfTI mask file")
    if args.output.exists() and not args.output.is_dir():
        raise InputError(args.output, "output exists and is not a folder")
    image = read_scan(args.image)
    mask = read_volume(args.mask)
    arteries = read_volume(args.arteries) if args.arteries else None
    result = scan_calcium(image, mask, arteries)
    paths = write_calcium_report(result, args.output / strip_nifti_suffix(args.mask.name), preview=not args.no_preview)
    print(f"{summary_line(result.score)}; report in {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
