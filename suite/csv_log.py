"""A CSV logger whose ``csv/metrics.csv`` survives a resume.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it is rebuilt into the same folder,
so a resumed run (or a resume that fails) lost every row written before. Here the old file is kept
until the run knows where it resumes: at the start of training, rows at or after the resumed global
step are dropped (they are logged again) and the rest stay, so the resumed run's file equals an
uninterrupted run's. Rows are flushed to disk whenever a checkpoint is saved, so every row before a
checkpoint's step is on disk when that checkpoint is.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _record_new_keys(self) -> set[str]:
        # the file's header may have grown in another process (a ddp_spawn worker of an earlier
        # trainer.test writes through its own copy of this writer): a rewrite keeps those columns
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = sorted(set(self.metrics_keys) | set(next(csv.reader(f), [])))
        return super()._record_new_keys()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger(save_dir, name="csv", version="")`` that keeps earlier rows (see the module doc)."""

    def __init__(self, save_dir: str) -> None:
        super().__init__(save_dir, name="csv", version="")

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def drop_rows_from(self, step: int) -> None:
        """Rewrite metrics.csv (atomically) without rows whose step is >= ``step``."""
        path = Path(self.experiment.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)


class CSVResume(L.Callback):
    """Trims the kept CSV rows to the resumed step and flushes rows with every checkpoint."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, ResumableCSVLogger):
                    logger.drop_rows_from(trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()
