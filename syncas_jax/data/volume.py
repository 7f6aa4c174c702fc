"""One scan in, the network's input out, and the network's output back onto the scan's grid.

`preprocess_image` runs the training preprocessing on one CT volume: reorientation to the
canonical axes (`syncas_jax.data.orientation`), then crop, window and resampling
(`syncas_jax.data.transforms`); `predict_volume` puts any whole-image predictor between it and
`restore_to_original`, moves the result back to the file's axes and thresholds the coronary
probability (the argmax of the two-class softmax). Inference and training's periodic
evaluation both go through `predict_volume`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from syncas_jax.common.nifti import Volume
from syncas_jax.data.layout import TARGET_SPACING
from syncas_jax.data.orientation import Reorientation, orient
from syncas_jax.data.transforms import preprocess_hu, restore_to_original

#: image (Z', Y', X') float32, preprocessed → class probabilities (C, Z', Y', X') float32
ImagePredictor = Callable[[np.ndarray], np.ndarray]


def preprocess_image(
    volume: Volume, target_spacing: Sequence[float] = TARGET_SPACING, orientation: str = "canonical"
) -> tuple[np.ndarray, dict[str, Any]]:
    """One CT volume (HU, (z, y, x)) → (float32 (Z', Y', X') network input in canonical orientation, properties).

    properties: those of `restore_to_original` (on the canonical grid), plus "affine" (canonical),
    "reorientation" and "source_axcodes" (`restore_orientation` moves a result back to the file's axes).
    orientation "file" keeps the file's own axes (the reference's convention; the move is the identity).
    """
    canonical, move = orient(volume, orientation)
    data, _, properties = preprocess_hu(canonical.array[None], canonical.spacing, target_spacing, None)
    properties["affine"] = np.asarray(canonical.affine, float).tolist()
    properties["reorientation"] = move.to_list()
    properties["source_axcodes"] = list(move.source_axcodes)
    return data[0], properties


def restore_orientation(array: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
    """A (…, z, y, x) array on the canonical grid of `preprocess_image` → the input file's axes (exact)."""
    return np.ascontiguousarray(Reorientation.from_list(properties["reorientation"]).undo(array))


@dataclass
class Prediction:
    """segmentation: uint8 (Z, Y, X) class map on the input grid; probability: float32 (Z, Y, X) coronary
    probability on the input grid (None unless asked for); seconds: wall time per stage."""

    segmentation: np.ndarray
    probability: np.ndarray | None
    seconds: dict[str, float]


def predict_volume(
    volume: Volume,
    predict_image: ImagePredictor,
    *,
    spacing: Sequence[float] = TARGET_SPACING,
    probabilities: bool = False,
    orientation: str = "canonical",
) -> Prediction:
    """Segment one CT volume (HU, (z, y, x)): preprocess → `predict_image` → back to the input grid.

    spacing: target spacing (z, y, x) mm; orientation: as `preprocess_image` (the checkpoint's
    convention). With two classes only the coronary channel is resampled and thresholded at 0.5 (the
    argmax of the two-class softmax); otherwise all channels are resampled and the argmax taken.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    image, properties = preprocess_image(volume, spacing, orientation)
    seconds["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    softmax = predict_image(image)
    del image
    seconds["sliding_window"] = time.perf_counter() - start

    start = time.perf_counter()
    probability = None
    if softmax.shape[0] == 2:
        probability = restore_to_original(softmax[1], properties, is_label=False, outside=0.0).astype(np.float32)
        np.clip(probability, 0.0, 1.0, out=probability)  # float rounding of the softmax can exceed 1 by an ulp
        del softmax
        segmentation = (probability > 0.5).astype(np.uint8)
    else:
        restored = restore_to_original(softmax, properties, is_label=False)
        del softmax
        segmentation = np.argmax(restored, axis=0).astype(np.uint8)
        if probabilities:
            probability = np.clip(restored[1], 0.0, 1.0).astype(np.float32)
        del restored
    segmentation = restore_orientation(segmentation, properties)
    probability = restore_orientation(probability, properties) if probabilities and probability is not None else None
    seconds["export"] = time.perf_counter() - start
    return Prediction(segmentation, probability, seconds)
