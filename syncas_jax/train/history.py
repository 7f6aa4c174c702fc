"""Run bookkeeping: epoch records, the validation pseudo-Dice EMA and its best, and the files that show them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncas_jax.common.files import write_text
from syncas_jax.train.plots import plot_progress

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "progress.png"


@dataclass
class EpochSums:
    """Running sums of the step metrics of the epoch in progress (saved when a run is interrupted)."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self, steps: int) -> dict[str, float]:
        """Per-step means over `steps` steps (the epoch's length)."""
        return {key: value / max(steps, 1) for key, value in self.sums.items()}

    def to_json(self) -> dict[str, Any]:
        return {"sums": self.sums, "count": self.count, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> EpochSums:
        return cls() if not data else cls(dict(data["sums"]), int(data["count"]), float(data["seconds"]))


@dataclass
class RunHistory:
    """One record per finished epoch, the EMA (0.9 old / 0.1 new by default) of the pseudo-Dice, and its best."""

    records: list[dict[str, Any]] = field(default_factory=list)
    ema: float | None = None
    best_ema: float | None = None

    def add(self, record: dict[str, Any], pseudo_dice: float, decay: float) -> bool:
        """Append an epoch's record with its validation pseudo-Dice; True when the EMA is a new best."""
        self.ema = pseudo_dice if self.ema is None else decay * self.ema + (1 - decay) * pseudo_dice
        self.records.append({**record, "val_pseudo_dice": pseudo_dice, "val_pseudo_dice_ema": self.ema})
        improved = self.best_ema is None or self.ema > self.best_ema
        if improved:
            self.best_ema = self.ema
        return improved

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    def to_json(self) -> dict[str, Any]:
        """The checkpoint-metadata form ({"history", "ema", "best_ema"})."""
        return {"history": self.records, "ema": self.ema, "best_ema": self.best_ema}

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> RunHistory:
        return cls(list(meta.get("history", [])), meta.get("ema"), meta.get("best_ema"))

    def write(self, folder: Path) -> None:
        """metrics.jsonl (all records, rewritten atomically) and progress.png in `folder`."""
        write_text("".join(json.dumps(r) + "\n" for r in self.records), folder / METRICS_FILE)
        plot_progress(self.records, folder / PLOT_FILE)
