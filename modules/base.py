"""Base LightningModule of the suite: keyed per-example noise and the evaluation counter."""

from __future__ import annotations

import math

import lightning as L
import torch

from core.utils.nfe import EvalCounter
from core.utils.noise import example_normal, example_uniform


class GenLabModule(L.LightningModule):
    """Adds what every trained module of the suite shares.

    * ``noise_seed``: set by run.py from ``seed``; noise drawn through :meth:`example_normal` and
      :meth:`example_uniform` is a function of (noise_seed, global_step, example index, stream)
      only, so a global batch gets identical noise on 1 or N processes and after a resume.
    * ``nfe``: the suite's one :class:`~core.utils.nfe.EvalCounter` for this module's network evaluations.
    """

    noise_seed: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.nfe = EvalCounter()

    def example_normal(self, index: torch.Tensor, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
        z = example_normal(index, tuple(shape), self.noise_seed, int(self.global_step), stream)
        return z.to(self.device)

    def example_uniform(self, index: torch.Tensor, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
        u = example_uniform(index, tuple(shape), self.noise_seed, int(self.global_step), stream)
        return u.to(self.device, torch.float32)

    def warmup_cosine(self, optimizer: torch.optim.Optimizer, warmup_steps: int) -> dict:
        """Lightning's optimizer config with a per-step schedule: linear warm-up over
        min(warmup_steps, max_steps / 10) steps, then cosine decay to 10% of the base rate at max_steps."""
        max_steps = self.trainer.max_steps if self.trainer is not None else -1
        total = int(max_steps) if max_steps and max_steps > 0 else 10_000
        warm = max(min(warmup_steps, total // 10), 1)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
