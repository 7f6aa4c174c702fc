"""The demo's picture: a held-out CTA slice, its realistic synthetic NCCT, and the prediction on it and on the tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from syncas_jax.common.files import atomic_path
from syncas_jax.common.nifti import read_volume

HIT, FALSE_POSITIVE, MISSED = (1.0, 0.85, 0.0, 0.9), (1.0, 0.15, 0.1, 0.85), (0.1, 0.9, 0.2, 0.85)


def _overlay(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """RGBA (Y, X, 4) of two boolean (Y, X) masks: yellow both, red prediction only, green reference only."""
    rgba = np.zeros((*ref.shape, 4))
    rgba[ref & ~pred] = MISSED
    rgba[pred & ~ref] = FALSE_POSITIVE
    rgba[pred & ref] = HIT
    return rgba


def make_figure(out: Path, case_id: str, title: str = "") -> Path:
    """out/figure.png for held-out case `case_id` of a demo folder (test_cta, test_ncct, test_labels, pred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cta = read_volume(out / "test_cta" / f"{case_id}.img.nii.gz").array
    ncct = read_volume(out / "test_ncct" / f"{case_id}_NCCT.nii.gz").array
    ref = read_volume(out / "test_labels" / f"{case_id}_NCCT.nii.gz").array > 0
    pred = read_volume(out / "pred" / f"CA_{case_id}_NCCT.nii.gz").array > 0
    z = int(np.argmax(ref.sum(axis=(1, 2))))
    window = dict(cmap="gray", vmin=-150, vmax=250)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6))
    panels = [
        (cta[z], None, "contrast CT (held-out phantom)"),
        (ncct[z], None, "synthetic non-contrast CT (realistic)"),
        (ncct[z], _overlay(pred[z], ref[z]), "prediction on this slice"),
        (np.full(ref.shape[1:], -1000.0), _overlay(pred.any(axis=0), ref.any(axis=0)), "whole tree (axial projection)"),
    ]
    for ax, (image, overlay, label) in zip(axes, panels):
        ax.imshow(image, **window)
        if overlay is not None:
            ax.imshow(overlay, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{title}   yellow: found, red: false positive, green: missed", fontsize=10)
    fig.tight_layout()
    path = out / "figure.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
