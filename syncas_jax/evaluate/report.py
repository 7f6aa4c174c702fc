"""Scoring cases and reporting them: metrics per case, the printed table, CSV and JSON."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncas_jax import metrics
from syncas_jax.calcium.report import scan_calcium
from syncas_jax.common.errors import InputError
from syncas_jax.common.files import write_json, write_text
from syncas_jax.common.nifti import check_same_grid, read_volume
from syncas_jax.evaluate.overlay import write_overlay
from syncas_jax.evaluate.pairing import Case

PRINTED_COLUMNS = (
    ("dice", "Dice", "{:.4f}"),
    ("iou", "IoU", "{:.4f}"),
    ("precision", "Prec", "{:.4f}"),
    ("recall", "Rec", "{:.4f}"),
    ("specificity", "Spec", "{:.5f}"),
    ("hd95_mm", "HD95mm", "{:.2f}"),
    ("msd_mm", "MSDmm", "{:.2f}"),
    ("cldice", "clDice", "{:.4f}"),
    ("cl_precision", "clPrec", "{:.4f}"),
    ("cl_recall", "clRec", "{:.4f}"),
    ("agatston_ref", "AgRef", "{:.1f}"),
    ("agatston_pred", "AgPred", "{:.1f}"),
)


def evaluate_case(case: Case, overlay: str | Path | None = None) -> dict[str, float | int]:
    """Read the case's files, check they share one grid, return `metrics.case_metrics`.

    The Agatston columns (with an image) come from `syncas_jax.calcium.report.scan_calcium`, the
    calcium report's own computation, on axial slices whatever the files' axis order.
    With `overlay`, also write the overlay PNG there (see `write_overlay`).
    """
    if case.pred is None:
        raise InputError(case.ref, "no prediction paired with this reference")
    ref = read_volume(case.ref)
    pred = read_volume(case.pred)
    check_same_grid(ref, pred)
    image = None
    if case.image is not None:
        image = read_volume(case.image)
        check_same_grid(ref, image)
    ref_mask, pred_mask = ref.array > 0, pred.array > 0
    image_hu = None if image is None else image.array
    result = metrics.case_metrics(pred_mask, ref_mask, ref.spacing)
    if image is not None:
        result["agatston_ref"] = scan_calcium(image, ref).score.agatston
        result["agatston_pred"] = scan_calcium(image, pred).score.agatston
    if overlay is not None:
        title = (
            f"{case.name}   Dice {result['dice']:.3f}   HD95 {_fmt(result['hd95_mm'], '{:.2f}')} mm"
            f"   clDice {result['cldice']:.3f}"
        )
        write_overlay(overlay, pred_mask, ref_mask, ref.spacing, image_hu, title)
    return result


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    return fmt.format(value)


def format_table(cases: Sequence[Case], summary: dict[str, dict[str, Any]]) -> str:
    """Printable table of the main metrics per case, then mean and std rows (over finite values)."""
    done = [c for c in cases if c.error is None]
    columns = [c for c in PRINTED_COLUMNS if any(c[0] in case.metrics for case in done)]
    header = ["case", *(title for _, title, _ in columns)]
    rows = [[c.name, *(_fmt(c.metrics.get(key), fmt) for key, _, fmt in columns)] for c in done]
    stats = [
        [stat, *(_fmt((summary.get(key) or {}).get(stat), fmt) for key, _, fmt in columns)] for stat in ("mean", "std")
    ]
    table = [header, *rows, *(stats if done else [])]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in table
    ]
    rule = "-" * len(lines[0])
    lines.insert(1, rule)
    if done:
        lines.insert(len(lines) - 2, rule)
    return "\n".join(lines)


def metrics_csv(cases: Sequence[Case], summary: dict[str, dict[str, Any]]) -> str:
    """CSV text: case, files, every metric, error; then rows `mean` and `std`."""
    keys = [k for k in (*metrics.METRIC_KEYS, *metrics.AGATSTON_KEYS) if any(k in c.metrics for c in cases)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "reference", "prediction", "image", *keys, "error"])
    for c in cases:
        values = [_fmt(c.metrics.get(k), "{!r}") if k in c.metrics else "" for k in keys]
        writer.writerow([c.name, c.ref, c.pred or "", c.image or "", *values, c.error or ""])
    for stat in ("mean", "std"):
        cells = [summary[k][stat] if k in summary and summary[k][stat] is not None else "" for k in keys]
        writer.writerow([stat, "", "", "", *cells, ""])
    return buffer.getvalue()


def write_report(out_dir: Path, cases: Sequence[Case], summary: dict[str, dict[str, Any]]) -> None:
    """Write metrics.csv and metrics.json (atomically) into `out_dir`."""
    write_text(metrics_csv(cases, summary), out_dir / "metrics.csv")
    report = {
        "cases": [
            {"case": c.name, "reference": str(c.ref), "prediction": str(c.pred) if c.pred else None,
             "image": str(c.image) if c.image else None, "metrics": c.metrics}
            for c in cases if c.error is None
        ],
        "failed": [{"case": c.name, "reference": str(c.ref), "error": c.error} for c in cases if c.error is not None],
        "summary": summary,
        "conventions": "HD95/MSD in mm as DeepMind surface-distance (max of directed area-weighted 95th percentiles;"
        " mean of directed area-weighted averages); null = not finite (one mask empty); mean/std over finite"
        " values, n = their count; Agatston per docs/design.md §7.",
    }  # fmt: skip
    write_json(report, out_dir / "metrics.json")
