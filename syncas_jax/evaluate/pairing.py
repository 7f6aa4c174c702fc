"""Which prediction (and CT image) goes with which reference mask.

Pairing rule. Every NIfTI file `S.nii.gz` (or `.nii`) in --ref is one case. Its id I is S
without a trailing `.label` (ImageCAS) and its core C is I without a leading `CA_`
(inference output prefix). The prediction is the first of these stems found in --pred:
S, I, I.label, I.img, CA_I, C, CA_C (each as .nii.gz or .nii). The CT image (for Agatston)
is the first of I.img, I, C.img, C, S found in --image. A file is never paired with itself.
Foreground is value > 0. ImageCAS images (`*.img.nii.gz`), hidden files, folders and
sidecars (.json, .csv, .txt, ...) in --ref are ignored (so --ref and --image may be one
ImageCAS folder); any other non-NIfTI file is a failed case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import NIFTI_SUFFIXES, strip_nifti_suffix

SIDECAR_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".md", ".log", ".png", ".jpg", ".jpeg", ".pdf", ".yaml", ".yml")


@dataclass
class Case:
    """One reference file and what was paired with it."""

    name: str
    ref: Path
    pred: Path | None = None
    image: Path | None = None
    error: str | None = None
    metrics: dict[str, float | int] = field(default_factory=dict)


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Map stem -> path of the NIfTI files in `folder` (.nii.gz preferred over .nii)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.endswith(NIFTI_SUFFIXES):
            stem = strip_nifti_suffix(path.name)
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
        raise InputError(path, f"{what} folder not found")
    if not path.is_dir():
        raise InputError(path, f"{what} must be a folder")
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
        and not p.name.endswith(NIFTI_SUFFIXES)
        and p.suffix.lower() not in SIDECAR_SUFFIXES
    ]
    if not refs and not others:
        raise InputError(ref_dir, "no reference masks (.nii or .nii.gz, not *.img.nii.gz) in the folder")
    preds = _nifti_files(pred_dir)
    if not preds:
        raise InputError(pred_dir, "no NIfTI files (.nii or .nii.gz) in the prediction folder")
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
            case.error = str(InputError(ref, f"no prediction in {pred_dir} (tried {tried})"))
        elif image_dir is not None:
            resolved = {ref.resolve(), case.pred.resolve()}
            case.image = next(
                (images[s] for s in image_stems if s in images and images[s].resolve() not in resolved), None
            )
            if case.image is None:
                tried = ", ".join(f"{s}.nii.gz" for s in image_stems)
                case.error = str(InputError(ref, f"no CT image in {image_dir} (tried {tried})"))
        cases.append(case)
    for path in others:
        cases.append(Case(name=path.name, ref=path, error=str(InputError(path, "not a NIfTI file"))))
    return cases
