"""Writes the run's curves to ``history.csv``: one row per logging event, one column per scalar, at the
steps the loggers (W&B, csv/metrics.csv) receive them, so that claims about late training can be
computed without a logger. Its rows are part of the checkpoint, so a resumed run continues the file.

Rows: the ``train/`` metrics whenever Lightning logs them (every ``log_every_n_steps`` optimizer steps,
at the step Lightning gives them: the number of optimizer steps taken before the batch), the ``val/``
metrics after each validation (at the step Lightning gives them, the same count), every measurement a callback logs through
``modules.media.log_measurement`` (sharpness, memorization, representation, GenEval, ridge, RL watch:
at the step it was taken), and after each test every scalar the test logged. During an evaluation
sweep the sweep sets ``key_suffix`` (``sample_nfe_6``) and the test's keys carry it, as in W&B."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch


class HistoryCallback(L.Callback):
    def __init__(self, path: str, every_n_steps: int = 50) -> None:
        self.path, self.every_n_steps = Path(path), every_n_steps
        self.rows: list[dict[str, float]] = []
        self.key_suffix = ""  # set by suite.sweep_log during an evaluation sweep's re-tests

    def _record(self, step: int, values: dict[str, float], suffix: str = "") -> None:
        if values:
            self.rows.append({"step": float(step), **{k + suffix: v for k, v in values.items()}})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning logs the train/ metrics of a batch at `_batches_that_stepped` (the optimizer steps
        # before it) when that count + 1 is a multiple of log_every_n_steps, and not between the batches
        # of an accumulated step (logger_connector.should_update_logs)
        stepped = trainer.fit_loop.epoch_loop._batches_that_stepped
        if self.every_n_steps <= 0 or trainer.fit_loop._should_accumulate():
            return
        if (stepped + 1) % self.every_n_steps == 0:
            self._record(stepped, _scalars(trainer.callback_metrics, ("train/",)))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:  # logged, like train/, at the optimizer steps before the last batch
            self._record(trainer.fit_loop.epoch_loop._batches_that_stepped,
                         _scalars(trainer.callback_metrics, ("val/",)))

    def on_measurement(self, trainer: L.Trainer, step: int, values: dict[str, float]) -> None:
        """A measurement logged through modules.media.log_measurement (a test's are read at its end)."""
        if not trainer.testing:
            self._record(step, values)

    def on_test_end(self, trainer, pl_module) -> None:
        # callback_metrics are reset when a test starts: all of them were logged by this test. The row is
        # added to the file as it is on disk: under ddp_spawn each fit and test runs in a worker with its
        # own copy of this callback, so the training rows are in the file, not in this copy
        before = len(self.rows)
        self._record(trainer.global_step, _scalars(trainer.callback_metrics), self.key_suffix)
        if trainer.is_global_zero and len(self.rows) > before:
            on_disk = []
            if self.path.is_file():
                with open(self.path, newline="") as f:
                    on_disk = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
            self._write(on_disk + self.rows[before:])

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and self.rows:
            self._write(self.rows)

    def _write(self, rows: list[dict[str, float]]) -> None:
        columns = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])


def _scalars(metrics: dict, prefixes: tuple[str, ...] | None = None) -> dict[str, float]:
    row = {}
    for k, v in metrics.items():
        if prefixes and not k.startswith(prefixes):
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            row[k] = float(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            row[k] = float(v)
    return row
