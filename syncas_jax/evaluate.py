"""Evaluate predicted coronary masks against reference masks: `python -m syncas_jax.evaluate`.

    python -m syncas_jax.evaluate --pred PRED_DIR --ref REF_DIR [--image CT_DIR] [-o report]

Writes REPORT/metrics.csv (one row per case, then mean and std rows), REPORT/metrics.json
(per case, failures, mean/std/n per metric) and REPORT/overlays/{case}.png, and prints a
table. Metric definitions and empty-mask conventions: `syncas_jax.metrics`.

Pairing rule. Every NIfTI file `S.nii.gz` (or `.nii`) in --ref is one case. Its id I is S
without a trailing `.label` (ImageCAS) and its core C is I without a leading `CA_`
(inference output prefix). The prediction is the first of these stems found in --pred:
S, I, I.label, I.img, CA_I, C, CA_C (each as .nii.gz or .nii). The CT image (for Agatston)
is the first of I.img, I, C.img, C, S found in --image. A file is never paired with itself.
Foreground is value > 0. ImageCAS images (`*.img.nii.gz`), hidden files, folders and
sidecars (.json, .csv, .txt, ...) in --ref are ignored (so --ref and --image may be one
ImageCAS folder); any other non-NIfTI file is a failed case.

A failed case (missing prediction or image, unreadable file, shape or affine mismatch)
is reported on one line naming the file; the other cases go on, and the exit status is
1 if any case failed (2 for an unusable folder).
"""

from __future__ import annotations

import argparse
import csv
import io as _stringio
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from syncas_jax import io, metrics
from syncas_jax.console import guarded, progress

SIDECAR_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".md", ".log", ".png", ".jpg", ".jpeg", ".pdf", ".yaml", ".yml")
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


@dataclass
class Case:
    """One reference file and what was paired with it."""

    name: str
    ref: Path
    pred: Path | None = None
    image: Path | None = None
    error: str | None = None
    metrics: dict[str, float | int] = field(default_factory=dict)


# --------------------------------------------------------------------------- pairing


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Map stem -> path of the NIfTI files in `folder` (.nii.gz preferred over .nii)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.endswith(io.NIFTI_SUFFIXES):
            stem = io.strip_nifti_suffix(path.name)
            if stem not in found or path.name.endswith(".nii.gz"):
                found[stem] = path
    return found


def _stems(ref_stem: str) -> tuple[str, list[str], list[str]]:
    """Case id and candidate stems (prediction, image) for a reference stem, in priority order."""
    ident = ref_stem[: -len(".label")] if ref_stem.endswith(".label") else ref_stem
    core = ident[len("CA_") :] if ident.startswith("CA_") else ident
    pred = [ref_stem, ident, f"{ident}.label", f"{ident}.img", f"CA_{ident}", core, f"CA_{core}"]
    image = [f"{ident}.img", ident, f"{core}.img", core, ref_stem]
    return ident, list(dict.fromkeys(pred)), list(dict.fromkeys(image))


def _folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise io.InputError(path, f"{what} folder not found")
    if not path.is_dir():
        raise io.InputError(path, f"{what} must be a folder")
    return path


def pair_cases(ref_dir: str | Path, pred_dir: str | Path, image_dir: str | Path | None = None) -> list[Case]:
    """Pair every reference file with its prediction (and CT image); see the module docstring.

    Raises InputError for a missing or empty folder; per-case problems go into Case.error.
    """
    ref_dir, pred_dir = _folder(ref_dir, "reference"), _folder(pred_dir, "prediction")
    image_dir = None if image_dir is None else _folder(image_dir, "image")
    refs = {stem: path for stem, path in _nifti_files(ref_dir).items() if not stem.endswith(".img")}
    others = [
        p
        for p in sorted(ref_dir.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and not p.name.endswith(io.NIFTI_SUFFIXES)
        and p.suffix.lower() not in SIDECAR_SUFFIXES
    ]
    if not refs and not others:
        raise io.InputError(ref_dir, "no reference masks (.nii or .nii.gz, not *.img.nii.gz) in the folder")
    preds = _nifti_files(pred_dir)
    if not preds:
        raise io.InputError(pred_dir, "no NIfTI files (.nii or .nii.gz) in the prediction folder")
    images = _nifti_files(image_dir) if image_dir is not None else {}

    cases: list[Case] = []
    names: set[str] = set()
    for stem, ref in refs.items():
        ident, pred_stems, image_stems = _stems(stem)
        name, number = (ident if ident not in names else stem), 2
        while name in names:  # e.g. both 1.label.nii.gz and 1.nii.gz in --ref
            name, number = f"{stem}_{number}", number + 1
        names.add(name)
        case = Case(name=name, ref=ref)
        case.pred = next((preds[s] for s in pred_stems if s in preds and preds[s].resolve() != ref.resolve()), None)
        if case.pred is None:
            tried = ", ".join(f"{s}.nii.gz" for s in pred_stems)
            case.error = str(io.InputError(ref, f"no prediction in {pred_dir} (tried {tried})"))
        elif image_dir is not None:
            resolved = {ref.resolve(), case.pred.resolve()}
            case.image = next(
                (images[s] for s in image_stems if s in images and images[s].resolve() not in resolved), None
            )
            if case.image is None:
                tried = ", ".join(f"{s}.nii.gz" for s in image_stems)
                case.error = str(io.InputError(ref, f"no CT image in {image_dir} (tried {tried})"))
        cases.append(case)
    for path in others:
        cases.append(Case(name=path.name, ref=path, error=str(io.InputError(path, "not a NIfTI file"))))
    return cases


# --------------------------------------------------------------------------- one case


def evaluate_case(case: Case, overlay: str | Path | None = None) -> dict[str, float | int]:
    """Read the case's files, check they share one grid, return `metrics.case_metrics`.

    With `overlay`, also write the overlay PNG there (see `write_overlay`).
    """
    if case.pred is None:
        raise io.InputError(case.ref, "no prediction paired with this reference")
    ref = io.read_volume(case.ref)
    pred = io.read_volume(case.pred)
    io.check_same_grid(ref, pred)
    image = None
    if case.image is not None:
        image = io.read_volume(case.image)
        io.check_same_grid(ref, image)
    ref_mask, pred_mask = ref.array > 0, pred.array > 0
    image_hu = None if image is None else image.array
    result = metrics.case_metrics(pred_mask, ref_mask, ref.spacing, image_hu)
    if overlay is not None:
        title = (
            f"{case.name}   Dice {result['dice']:.3f}   HD95 {_fmt(result['hd95_mm'], '{:.2f}')} mm"
            f"   clDice {result['cldice']:.3f}"
        )
        write_overlay(overlay, pred_mask, ref_mask, ref.spacing, image_hu, title)
    return result


def write_overlay(
    path: str | Path,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    image_hu: np.ndarray | None = None,
    title: str = "",
) -> None:
    """PNG of prediction vs reference: axial and coronal MIPs and three axial slices.

    pred, ref: (Z, Y, X) boolean masks; spacing (z, y, x) mm; image_hu: CT underneath
    (window -150..250 HU; axial MIP panel shows the mean over the masks' slab). Colours:
    green = both, red = prediction only (false positive), blue = reference only (missed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    union = pred | ref
    zs, ys, xs = (np.nonzero(union.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
    margin = 16

    def span(idx: np.ndarray, n: int) -> slice:
        return slice(0, n) if idx.size == 0 else slice(max(idx[0] - margin, 0), min(idx[-1] + margin + 1, n))

    zsl, ysl, xsl = span(zs, ref.shape[0]), span(ys, ref.shape[1]), span(xs, ref.shape[2])
    colours = np.array([[0, 0, 0, 0], [0.1, 0.9, 0.1, 0.8], [1, 0.15, 0.1, 0.8], [0.15, 0.4, 1, 0.8]])

    def classes(p: np.ndarray, r: np.ndarray) -> np.ndarray:
        return colours[np.select([p & r, p, r], [1, 2, 3], 0)]

    ref_z = np.nonzero(ref.any(axis=(1, 2)))[0]
    z_src = ref_z if ref_z.size else zs
    if z_src.size:
        slices = [int(z_src[0] + q * (z_src[-1] - z_src[0])) for q in (0.25, 0.5, 0.75)]
    else:
        slices = [int(q * (ref.shape[0] - 1)) for q in (0.25, 0.5, 0.75)]
    sz, sy, sx = (float(s) for s in spacing)
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.6), facecolor="white")
    panels: list[tuple[str, np.ndarray | None, np.ndarray, float]] = []  # title, CT, overlay, aspect
    ct = None if image_hu is None else np.clip(image_hu[zsl, ysl, xsl], -150, 250)  # the shown box only
    axial_bg = None if ct is None else ct.mean(axis=0)
    panels.append(("axial MIP", axial_bg, classes(pred.any(0), ref.any(0))[ysl, xsl], sy / sx))
    coronal_bg = None if ct is None else ct.mean(axis=1)
    panels.append(("coronal MIP", coronal_bg, classes(pred.any(1), ref.any(1))[zsl, xsl], sz / sx))
    for z in slices:
        bg = None if image_hu is None else np.clip(image_hu[z, ysl, xsl], -150, 250)
        panels.append((f"axial slice z={z}", bg, classes(pred[z], ref[z])[ysl, xsl], sy / sx))
    for ax, (label, bg, overlay, aspect) in zip(axes, panels):
        if bg is not None:
            ax.imshow(bg, cmap="gray", aspect=aspect, interpolation="nearest")
        else:
            ax.imshow(np.zeros(overlay.shape[:2]), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        ax.imshow(overlay, aspect=aspect, interpolation="nearest")
        if label.startswith("coronal"):
            ax.invert_yaxis()  # slice index upwards
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    handles = [
        Patch(color=colours[i][:3], label=t) for i, t in ((1, "both"), (2, "prediction only"), (3, "reference only"))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- reporting


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None so the JSON stays valid."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


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
    buffer = _stringio.StringIO()
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
    with io.atomic_path(out_dir / "metrics.csv") as tmp:
        tmp.write_text(metrics_csv(cases, summary))
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
        " values, n = their count; Agatston per SPEC section 7.",
    }  # fmt: skip
    io.write_json(_json_safe(report), out_dir / "metrics.json")


# --------------------------------------------------------------------------- CLI


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
            except io.InputError as error:
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
