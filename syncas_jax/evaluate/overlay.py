"""Overlay PNG of a prediction against its reference: MIPs and axial slices over the CT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from syncas_jax.common.files import atomic_path


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
