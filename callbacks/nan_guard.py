"""Stops a run at the first non-finite loss, gradient or parameter, before the optimizer applies
it, so the last checkpoint on disk is the last good state."""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteError(RuntimeError):
    """Raised by :class:`NaNGuard`; the message names the step, the loss and the tensor."""


class NaNGuard(L.Callback):
    def __init__(self) -> None:
        self.last_loss: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.last_loss = float(loss.detach())
            if not torch.isfinite(loss).all():
                raise NonFiniteError(f"step {trainer.global_step}: loss is {self.last_loss}")
        self._check(trainer, pl_module, "parameter", lambda p: p)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._check(trainer, pl_module, "gradient", lambda p: p.grad)

    def _check(self, trainer, pl_module, kind: str, get) -> None:
        tensors = [t for t in (get(p) for p in pl_module.parameters()) if t is not None]
        # one reduction and one host sync per step: a NaN or inf anywhere makes the sum non-finite
        if not tensors or torch.isfinite(torch.stack([t.detach().float().sum() for t in tensors]).sum()):
            return
        for name, param in pl_module.named_parameters():
            tensor = get(param)
            if tensor is not None and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise NonFiniteError(
                    f"step {trainer.global_step}: {kind} of {name} has {bad} non-finite values "
                    f"(last loss {self.last_loss}); the last good checkpoint is kept")
