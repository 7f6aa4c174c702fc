"""The calcium report of one scan and a coronary mask: JSON, CSV lesion table and a preview PNG.

`scan_calcium` reorients both to the canonical axes (`syncas_jax.data.orientation`: axial
slices, whatever the file's axis order) and runs `syncas_jax.metrics.calcium.calcium_score`;
`write_calcium_report` writes, beside `stem`:

* ``<stem>_calcium.json``: keys ``agatston``, ``volume_mm3``, ``lesion_count``,
  ``risk_category``, ``lesions`` (a list of {slice, row, column, area_mm2, peak_hu, weight,
  score, volume_mm3});
* ``<stem>_calcium.csv``: the lesion table, one row per lesion;
* ``<stem>_calcium.png``: the slices with the most calcium, lesions coloured by weight.

Slice, row and column are voxel indices of the canonical grid: slice 0 is the most inferior,
row 0 the most anterior, column 0 the patient's rightmost (the radiological display).
Used by `python -m syncas_jax.calcium` and `python -m syncas_jax.infer --report`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from syncas_jax.common.files import write_json, write_text
from syncas_jax.common.nifti import Volume, check_same_grid
from syncas_jax.data.orientation import to_canonical
from syncas_jax.metrics.calcium import LESION_FIELDS, CalciumScore, calcium_score, lesion_weight_map

REPORT_SUFFIX = "_calcium"


@dataclass(frozen=True)
class ScanCalcium:
    """score, and the canonical image (HU) and mask (bool) it was computed on, with their (z, y, x) spacing mm."""

    score: CalciumScore
    image_hu: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]


def scan_calcium(image: Volume, mask: Volume) -> ScanCalcium:
    """Calcium of `image` (HU) inside `mask` (value > 0); InputError (naming the mask) unless both share a grid."""
    check_same_grid(image, mask)
    canonical_image, _ = to_canonical(image)
    canonical_mask, _ = to_canonical(mask)
    hu, inside = np.asarray(canonical_image.array, np.float32), np.asarray(canonical_mask.array) > 0
    score = calcium_score(hu, inside, canonical_image.spacing)
    return ScanCalcium(score, hu, inside, canonical_image.spacing)


def report_paths(stem: str | os.PathLike) -> dict[str, Path]:
    """`<stem>_calcium.json`, `.csv` and `.png`."""
    stem = Path(stem)
    base = stem.with_name(stem.name + REPORT_SUFFIX)
    return {kind: base.with_name(f"{base.name}.{kind}") for kind in ("json", "csv", "png")}


def lesion_csv(score: CalciumScore) -> str:
    """The lesion table as CSV text: a header row of LESION_FIELDS, then one row per lesion."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LESION_FIELDS)
    for lesion in score.lesions:
        writer.writerow([getattr(lesion, name) for name in LESION_FIELDS])
    return buffer.getvalue()


def summary_line(score: CalciumScore) -> str:
    """'Agatston 12.0 (1-99), volume 13.5 mm³, 4 lesions'."""
    plural = "" if score.lesion_count == 1 else "s"
    return (
        f"Agatston {score.agatston:.1f} ({score.risk_category}), volume {score.volume_mm3:.1f} mm³, "
        f"{score.lesion_count} lesion{plural}"
    )


def write_calcium_report(result: ScanCalcium, stem: str | os.PathLike, *, preview: bool = True) -> dict[str, Path]:
    """Write the JSON, the CSV and (with `preview`) the PNG of `result` beside `stem`; returns their paths."""
    from syncas_jax.calcium.preview import write_preview

    paths = report_paths(stem)
    if preview:
        weights = lesion_weight_map(result.image_hu, result.mask, result.spacing)
        write_preview(paths["png"], result.image_hu, result.mask, weights, result.spacing, summary_line(result.score))
    else:
        paths.pop("png")
    write_text(lesion_csv(result.score), paths["csv"])
    write_json(result.score.to_dict(), paths["json"])
    return paths

