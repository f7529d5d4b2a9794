"""The cadence shared by the step-driven measurement callbacks (memorization, representation)."""

from __future__ import annotations

import lightning as L


class EveryNSteps(L.Callback):
    """Calls ``self.measure(trainer, pl_module)`` after the optimiser steps that are a positive multiple
    of ``every_n_steps`` (0: never) and after the last step (``max_steps``), so that every run ends
    measured whatever its length. Subclasses set ``every_n_steps`` and define ``measure``."""

    every_n_steps: int = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
        if due or (trainer.max_steps > 0 and step == trainer.max_steps):
            self.measure(trainer, pl_module)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        raise NotImplementedError
