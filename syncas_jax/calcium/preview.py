"""Preview PNG of a calcium report: the axial slices with the most calcium, lesions coloured by weight."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from syncas_jax.common.files import atomic_path

WINDOW_HU = (-250.0, 750.0)  # wide enough to tell calcium (≥ 130 HU) from soft tissue
MAX_PANELS = 4
MARGIN = 12
EXCLUDED_COLOUR = (0.2, 0.45, 1.0)  # bone or aortic wall the mask touched, not scored
WEIGHT_COLOURS = {1: (1.0, 0.9, 0.1), 2: (1.0, 0.55, 0.0), 3: (1.0, 0.1, 0.1), 4: (0.85, 0.1, 0.9)}


def preview_slices(
    mask: np.ndarray, weights: np.ndarray, count: int = MAX_PANELS, excluded: np.ndarray | None = None
) -> list[int]:
    """Up to `count` axial slices, ascending: those with the most lesion voxels, then those with the most excluded
    voxels (bone or aortic wall the mask touched), else the mask's middle slice."""
    lesion = np.count_nonzero(weights, axis=(1, 2))
    left_out = np.zeros_like(lesion) if excluded is None else np.count_nonzero(excluded, axis=(1, 2))
    shown = np.flatnonzero((lesion > 0) | (left_out > 0))
    if shown.size:
        best = sorted(shown, key=lambda z: (-lesion[z], -left_out[z], z))[:count]
        return sorted(int(z) for z in best)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    return [int(zs[len(zs) // 2])] if zs.size else [mask.shape[0] // 2]


def write_preview(
    path: str | Path,
    image_hu: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    spacing: Sequence[float],
    title: str,
    excluded: np.ndarray | None = None,
) -> None:
    """PNG: per chosen slice the CT (window −250..750 HU), the mask outline (cyan), lesions by weight and the
    structures left out as bone or aortic wall (`excluded`, bool (Z, Y, X), blue).

    Arrays (Z, Y, X) in canonical orientation (rows anterior → posterior, columns patient right → left:
    the radiological display); spacing (z, y, x) mm sets the pixel aspect.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    excluded = np.zeros(mask.shape, bool) if excluded is None else excluded
    slices = preview_slices(mask, weights, excluded=excluded)
    ys, xs = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if ys.size:
        rows = slice(max(ys[0] - MARGIN, 0), min(ys[-1] + MARGIN + 1, mask.shape[1]))
        cols = slice(max(xs[0] - MARGIN, 0), min(xs[-1] + MARGIN + 1, mask.shape[2]))
    else:
        rows, cols = slice(0, mask.shape[1]), slice(0, mask.shape[2])
    aspect = float(spacing[1]) / float(spacing[2])
    fig, axes = plt.subplots(1, len(slices), figsize=(4.2 * len(slices), 4.6), facecolor="white", squeeze=False)
    for ax, z in zip(axes[0], slices):
        ax.imshow(np.clip(image_hu[z, rows, cols], *WINDOW_HU), cmap="gray", aspect=aspect, interpolation="nearest")
        inside = mask[z, rows, cols]
        if inside.any() and not inside.all():
            ax.contour(inside.astype(np.float32), levels=[0.5], colors=["cyan"], linewidths=0.8)
        overlay = np.zeros((*inside.shape, 4))
        overlay[excluded[z, rows, cols]] = (*EXCLUDED_COLOUR, 0.6)
        for weight, colour in WEIGHT_COLOURS.items():
            overlay[weights[z, rows, cols] == weight] = (*colour, 0.9)
        ax.imshow(overlay, aspect=aspect, interpolation="nearest")
        ax.set_title(f"axial slice {z}", fontsize=10)
        ax.set_axis_off()
    handles = [Patch(color="cyan", label="coronary mask")]
    handles += [Patch(color=c, label=f"weight {w}") for w, c in WEIGHT_COLOURS.items()]
    handles += [Patch(color=EXCLUDED_COLOUR, label="excluded")] if excluded.any() else []
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    fig.suptitle(textwrap.fill(title, 40 * len(slices)), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.94))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
