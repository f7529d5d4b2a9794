"""Exponential moving average of the weights, used for validation, testing and sampling.

theta_ema <- decay * theta_ema + (1 - decay) * theta after every optimizer step (with the usual
warm-up min(decay, (1 + k) / (10 + k)) so early averages are not dominated by the initial weights;
the rule is core.optim.ema's, shared with the modules that keep their own EMA copies).
The EMA weights are swapped into the module for validation / test and swapped back afterwards;
they live in the callback's state, so they are saved and resumed with the checkpoint.
"""

from __future__ import annotations

import lightning as L
import torch

from core.optim.ema import ema_decay, ema_update_


class EMA(L.Callback):
    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._backup: dict[str, torch.Tensor] | None = None

    def _params(self, pl_module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pl_module.state_dict().items() if v.dtype.is_floating_point}

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.shadow is None:
            self.shadow = {k: v.detach().clone().float() for k, v in self._params(pl_module).items()}
        else:
            self.shadow = {k: v.to(pl_module.device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.updates += 1
        params = self._params(pl_module)
        ema_update_([self.shadow[k] for k in params], params.values(),
                    ema_decay(self.decay, self.updates if self.warmup else None))

    def _swap_in(self, pl_module) -> None:
        if self.shadow is None or self._backup is not None:
            return
        params = self._params(pl_module)
        self._backup = {k: v.detach().clone() for k, v in params.items()}
        for k, v in params.items():
            v.copy_(self.shadow[k].to(v.dtype))

    def _swap_out(self, pl_module) -> None:
        if self._backup is None:
            return
        for k, v in self._params(pl_module).items():
            v.copy_(self._backup[k])
        self._backup = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """Training is over: keep the EMA weights in the module for sampling and evaluation."""
        self._swap_in(pl_module)
        self._backup = None

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.updates = state["shadow"], int(state["updates"])
