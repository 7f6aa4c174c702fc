"""Training's periodic check on real scans: segment every scan of `evaluation_folder` and score it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax

from syncas_jax.common.errors import InputError
from syncas_jax.common.files import write_json
from syncas_jax.common.nifti import read_volume
from syncas_jax.common.precision import compute_dtype
from syncas_jax.data.orientation import to_canonical
from syncas_jax.data.volume import predict_volume
from syncas_jax.metrics import case_metrics, summarize
from syncas_jax.nets.predictor import predictor, unet_variables
from syncas_jax.nets.sliding_window import predict_sliding_window
from syncas_jax.train.config import Config
from syncas_jax.train.state import TrainState

IMAGE_SUFFIX = ".img.nii.gz"
LABEL_SUFFIX = ".label.nii.gz"


def evaluation_scans(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) of every `{id}.img.nii.gz` in `folder` with its `{id}.label.nii.gz`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "evaluation_folder not found")
    images = sorted(folder.glob(f"*{IMAGE_SUFFIX}"))
    if not images:
        raise InputError(folder, "evaluation_folder holds no {id}.img.nii.gz scans")
    return [(p.name[: -len(IMAGE_SUFFIX)], p, folder / (p.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)) for p in images]


def evaluate_folder(state: TrainState, config: Config, path: Path) -> dict[str, Any]:
    """Segment every scan of config.train.evaluation_folder with the current weights (no TTA), score it
    against its label and write {"cases", "summary"} to `path` (JSON). Returns the same dict."""
    tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    dtype = compute_dtype(config.train.precision, "infer")
    predict_fn = predictor(unet_variables(tree, config.model), config.model, dtype)
    predict_image = functools.partial(
        predict_sliding_window, predict_fn=predict_fn, patch_size=config.data.patch_size, tta=False
    )
    cases = {}
    for case_id, image_path, label_path in evaluation_scans(config.train.evaluation_folder or ""):
        scan = read_volume(image_path)
        prediction = predict_volume(
            scan, predict_image, spacing=config.data.spacing, orientation=config.data.orientation
        )
        (volume, move), (reference, _) = to_canonical(scan), to_canonical(read_volume(label_path))
        segmentation = move.apply(prediction.segmentation)  # scored in canonical axes (axial slices for calcium)
        cases[case_id] = case_metrics(segmentation, reference.array, volume.spacing, volume.array)
    report = {"cases": cases, "summary": summarize(list(cases.values()))}
    write_json(report, path)
    return report
