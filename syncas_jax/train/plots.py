"""Training progress plot (PNG), refreshed each epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from syncas_jax.common.files import atomic_path


def plot_progress(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Losses, validation pseudo-Dice (raw and EMA) and learning rate per epoch, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 1))
    for key, style in (("loss", "-"), ("dice_ce", "--"), ("contrastive", ":")):
        ax_loss.plot(epochs, [r[key] for r in history], style, label=f"train {key}")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    ax_dice.plot(epochs, [r["val_pseudo_dice"] for r in history], "g.", alpha=0.5, label="val pseudo-Dice")
    ax_dice.plot(epochs, [r["val_pseudo_dice_ema"] for r in history], "g-", label="val pseudo-Dice EMA")
    ax_dice.set_ylabel("pseudo-Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax_loss.get_legend_handles_labels()
    dice_lines = ax_dice.get_legend_handles_labels()
    ax_loss.legend(lines[0] + dice_lines[0], lines[1] + dice_lines[1], loc="upper right", fontsize=8)
    ax_lr.plot(epochs, [r["lr"] for r in history], "k-")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
