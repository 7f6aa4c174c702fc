"""Merge TotalSegmentator outputs and a coronary label into one label map for the data engine.

    python -m syncas_jax.synth.merge --coronary CASE.label.nii.gz \\
        [--total TOTAL.nii.gz | --total TOTAL_DIR] \\
        [--heartchambers HC.nii.gz | --heartchambers HC_DIR] -o CASE_MERGED.label.nii.gz

Ids: the `total` task as is (1–117), `heartchambers_highres` shifted by +117 (118–124),
coronary arteries (any non-zero voxel of --coronary) 128, painted in that order so the
coronary label wins. Each source is either one multi-label file (TotalSegmentator
`--ml`) or a folder of per-structure masks named by TotalSegmentator's class names
(`aorta.nii.gz`, `heart_myocardium.nii.gz`, …). All files must share one grid
(shape and affine). Output: uint8 NIfTI with the coronary file's affine and header.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from syncas_jax.common.console import guarded
from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import (
    NIFTI_SUFFIXES,
    Volume,
    check_same_grid,
    read_volume,
    strip_nifti_suffix,
    write_volume,
)
from syncas_jax.synth.hu_table import CORONARY_ID, HEARTCHAMBERS_OFFSET


def _total_classes() -> dict[str, int]:
    """TotalSegmentator v2 `total` task: class name → id (1–117)."""
    names = (
        ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas"]
        + ["adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left"]
        + ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea"]
        + ["thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate"]
        + ["kidney_cyst_left", "kidney_cyst_right", "sacrum", "vertebrae_S1"]
        + [f"vertebrae_L{i}" for i in range(5, 0, -1)]
        + [f"vertebrae_T{i}" for i in range(12, 0, -1)]
        + [f"vertebrae_C{i}" for i in range(7, 0, -1)]
        + ["heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right"]
        + ["subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left"]
        + ["brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left"]
        + ["superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein"]
        + ["iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right"]
        + ["humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right"]
        + ["femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord"]
        + [f"gluteus_{m}_{s}" for m in ("maximus", "medius", "minimus") for s in ("left", "right")]
        + ["autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right", "brain", "skull"]
        + [f"rib_{s}_{i}" for s in ("left", "right") for i in range(1, 13)]
        + ["sternum", "costal_cartilages"]
    )
    assert len(names) == 117
    return {name: i + 1 for i, name in enumerate(names)}


TOTAL_CLASSES = _total_classes()
HEARTCHAMBERS_CLASSES = {
    name: i + 1
    for i, name in enumerate(
        [
            "heart_myocardium",
            "heart_atrium_left",
            "heart_ventricle_left",
            "heart_atrium_right",
            "heart_ventricle_right",
            "aorta",
            "pulmonary_artery",
        ]
    )
}
TASKS = {"total": (TOTAL_CLASSES, 0), "heartchambers_highres": (HEARTCHAMBERS_CLASSES, HEARTCHAMBERS_OFFSET)}


def _integer_labels(volume: Volume, max_id: int) -> np.ndarray:
    values = volume.array
    if not np.array_equal(values, np.rint(values)) or values.min() < 0 or values.max() > max_id:
        raise InputError(
            volume.path, f"expected integer label ids in 0…{max_id}, found {values.min()}…{values.max()}"
        )
    return values.astype(np.int16)


def read_task(path: str | Path, task: str, grid: Volume) -> np.ndarray:
    """One TotalSegmentator task's labels on `grid`'s grid, in merged ids (int16 (Z, Y, X)).

    path: a multi-label file (task ids) or a folder of `{class name}.nii[.gz]` masks.
    """
    classes, offset = TASKS[task]
    path = Path(path)
    if path.is_dir():
        merged = np.zeros(grid.array.shape, np.int16)
        files = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        if not files:
            raise InputError(path, f"no NIfTI masks found for the {task} task")
        for file in files:
            name = strip_nifti_suffix(file.name)
            if name not in classes:
                raise InputError(file, f"not a class of the TotalSegmentator {task} task")
            mask = read_volume(file)
            check_same_grid(grid, mask)
            merged[mask.array > 0] = classes[name] + offset
        return merged
    volume = read_volume(path)
    check_same_grid(grid, volume)
    labels = _integer_labels(volume, len(classes))
    return np.where(labels > 0, labels + offset, 0).astype(np.int16)


def merge_labels(coronary: np.ndarray, *task_labels: np.ndarray) -> np.ndarray:
    """Paint task label maps (merged ids, later wins) then the coronary mask (→ 128); uint8 (Z, Y, X)."""
    merged = np.zeros(coronary.shape, np.uint8)
    for labels in task_labels:
        merged = np.where(labels > 0, labels, merged).astype(np.uint8)
    merged[coronary > 0] = CORONARY_ID
    return merged


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.synth.merge",
        description="Merge TotalSegmentator outputs and a coronary label into one label map (coronary = 128).",
    )
    parser.add_argument("--coronary", type=Path, required=True, help="coronary label (non-zero = coronary)")
    parser.add_argument("--total", type=Path, help="TotalSegmentator `total` output: multi-label file or mask folder")
    parser.add_argument("--heartchambers", type=Path, help="`heartchambers_highres` output: file or mask folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="merged label map (.nii.gz)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    if not str(args.output).endswith(NIFTI_SUFFIXES):
        raise InputError(args.output, "output must end in .nii or .nii.gz")
    if args.output.exists() and not args.overwrite:
        raise InputError(args.output, "exists (use --overwrite to replace it)")
    coronary = read_volume(args.coronary)
    if not np.any(coronary.array > 0):
        raise InputError(args.coronary, "coronary label is empty")
    tasks = [
        read_task(p, task, coronary)
        for p, task in ((args.total, "total"), (args.heartchambers, "heartchambers_highres"))
        if p
    ]
    merged = merge_labels(coronary.array, *tasks)
    write_volume(merged, args.output, coronary, dtype=np.uint8)
    present = ", ".join(str(i) for i in np.unique(merged) if i)
    print(f"merged label map written to {args.output} (ids {present})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
