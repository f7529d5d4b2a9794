"""Writes the run's curves to ``history.csv`` (one row per logging step, one column per scalar),
so that claims about late training can be computed without a logger. Its rows are part of the
checkpoint, so a resumed run continues the same file."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch


class HistoryCallback(L.Callback):
    def __init__(self, path: str, every_n_steps: int = 50) -> None:
        self.path, self.every_n_steps = Path(path), every_n_steps
        self.rows: list[dict[str, float]] = []

    def _record(self, trainer: L.Trainer, prefixes: tuple[str, ...] | None = None) -> None:
        row = {"step": float(trainer.global_step)}
        for k, v in trainer.callback_metrics.items():
            if prefixes and not k.startswith(prefixes):
                continue
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                row[k] = float(v)
            elif isinstance(v, (int, float)):
                row[k] = float(v)
        self.rows.append(row)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._record(trainer, ("train/",))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, ("val/",))

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or not self.rows:
            return
        columns = ["step"] + sorted({k for r in self.rows for k in r} - {"step"})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])
