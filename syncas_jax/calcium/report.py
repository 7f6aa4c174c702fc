"""The calcium report of one scan and a coronary mask: JSON, CSV lesion table and a preview PNG.

`scan_calcium` reorients both to the canonical axes (`syncas_jax.data.orientation`: axial
slices, whatever the file's axis order), gives every mask voxel its artery (an artery map when the
caller has one, else `syncas_jax.calcium.arteries.label_arteries`) and runs
`syncas_jax.metrics.calcium.calcium_score`; `write_calcium_report` writes, beside `stem`:

* ``<stem>_calcium.json``: keys ``agatston``, ``volume_mm3``, ``lesion_count``,
  ``risk_category``, ``cac_drs``, ``arteries`` ({LM, LAD, LCX, RCA, other: {agatston,
  volume_mm3, lesion_count}}), ``lesions`` (a list of {slice, row, column, area_mm2, peak_hu,
  weight, score, volume_mm3, artery, lesion}) and ``excluded`` (bright structures the mask
  touched that were left out as bone or aortic wall: {slice, row, column, area_mm2, peak_hu,
  outside_fraction});
* ``<stem>_calcium.csv``: the lesion table, one row per lesion and slice;
* ``<stem>_calcium.png``: the slices with the most calcium, lesions coloured by weight, excluded
  structures in blue.

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

from syncas_jax.calcium.arteries import label_arteries
from syncas_jax.common.arteries import REPORT_GROUPS
from syncas_jax.common.files import write_json, write_text
from syncas_jax.common.nifti import Volume, check_same_grid
from syncas_jax.data.orientation import to_canonical
from syncas_jax.metrics.calcium import LESION_FIELDS, CalciumScore, calcium_score, lesion_maps

REPORT_SUFFIX = "_calcium"


@dataclass(frozen=True)
class ScanCalcium:
    """score, and the canonical image (HU), mask (bool) and artery map (uint8 ids) it was computed on, with their
    (z, y, x) spacing mm."""

    score: CalciumScore
    image_hu: np.ndarray
    mask: np.ndarray
    arteries: np.ndarray
    spacing: tuple[float, float, float]


def scan_calcium(image: Volume, mask: Volume, arteries: Volume | None = None) -> ScanCalcium:
    """Calcium of `image` (HU) found through `mask` (value > 0), per artery.

    arteries: a map of artery ids (`syncas_jax.common.arteries`) on the same grid, e.g. a phantom's true one or
    `infer --arteries`' output; None labels the mask geometrically. InputError (naming the file) unless all
    share one grid.
    """
    check_same_grid(image, mask)
    canonical_image, _ = to_canonical(image)
    canonical_mask, _ = to_canonical(mask)
    hu, inside = np.asarray(canonical_image.array, np.float32), np.asarray(canonical_mask.array) > 0
    if arteries is None:
        artery_map = label_arteries(inside, canonical_image.spacing)
    else:
        check_same_grid(image, arteries)
        artery_map = np.asarray(to_canonical(arteries)[0].array).astype(np.uint8)
    score = calcium_score(hu, inside, canonical_image.spacing, artery_map)
    return ScanCalcium(score, hu, inside, artery_map, canonical_image.spacing)


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
    """'Agatston 12.0 (1-99), CAC-DRS A1/N2, volume 13.5 mm³, 4 lesions; LAD 8.0, LCX 4.0' (arteries with calcium),
    then '; 1 structure excluded (bone/aorta)' when the mask touched any."""
    plural = "" if score.lesion_count == 1 else "s"
    line = (
        f"Agatston {score.agatston:.1f} ({score.risk_category}), CAC-DRS {score.cac_drs}, "
        f"volume {score.volume_mm3:.1f} mm³, {score.lesion_count} lesion{plural}"
    )
    per_artery = [f"{name} {score.arteries[name].agatston:.1f}" for name in REPORT_GROUPS
                  if score.arteries[name].agatston > 0]  # fmt: skip
    if per_artery:
        line += "; " + ", ".join(per_artery)
    if score.excluded:
        line += f"; {len(score.excluded)} excluded (bone/aorta)"
    return line


def write_calcium_report(result: ScanCalcium, stem: str | os.PathLike, *, preview: bool = True) -> dict[str, Path]:
    """Write the JSON, the CSV and (with `preview`) the PNG of `result` beside `stem`; returns their paths."""
    from syncas_jax.calcium.preview import write_preview

    paths = report_paths(stem)
    if preview:
        weights, excluded = lesion_maps(result.image_hu, result.mask, result.spacing)
        title = summary_line(result.score)
        write_preview(paths["png"], result.image_hu, result.mask, weights, result.spacing, title, excluded)
    else:
        paths.pop("png")
    write_text(lesion_csv(result.score), paths["csv"])
    write_json(result.score.to_dict(), paths["json"])
    return paths

