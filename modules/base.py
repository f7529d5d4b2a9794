"""Base LightningModule of the suite: keyed per-example noise, the evaluation counter and the
suite's one learning-rate schedule (:func:`lr_factor`)."""

from __future__ import annotations

import math

import lightning as L
import torch

from core.utils.nfe import EvalCounter
from core.utils.noise import draw_normal, draw_uniform


def lr_factor(step: int, warmup: int, total: int | None = None, floor: float = 0.0) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (LambdaLR's factor).

    A linear warm-up (step + 1) / warmup over the first ``warmup`` steps; then, when ``total`` is
    given, a cosine decay floor + (1 - floor) (1 + cos(pi p)) / 2 with progress
    p = min((step - warmup) / (total - warmup), 1), from 1 at the end of warm-up to ``floor`` at
    ``total``; without ``total`` the base rate itself. (During warm-up p = 0 and the cosine factor
    is exactly 1, so the product below is the bare ramp.)
    """
    warm = min(1.0, (step + 1) / warmup)
    if total is None:
        return warm
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def per_step(optimizer: torch.optim.Optimizer, factor) -> dict:
    """Lightning's optimizer config with ``LambdaLR(optimizer, factor)`` stepped every optimiser step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class GenLabModule(L.LightningModule):
    """Adds what every trained module of the suite shares.

    * ``noise_seed``: set by run.py from ``seed``; noise drawn through :meth:`example_normal` and
      :meth:`example_uniform` is a function of (noise_seed, global_step, example index, stream)
      only, so a global batch gets identical noise on 1 or N processes and after a resume; with a
      ``generator`` (probes, validation) they draw from it instead, in call order.
    * ``nfe``: the suite's one :class:`~core.utils.nfe.EvalCounter` for this module's network evaluations.
    """

    noise_seed: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.nfe = EvalCounter()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint whose hyperparameters use constructor keys since moved into a nested
        network node, unless they agree with this module's (modules/renamed.py)."""
        from modules.renamed import check_hparams

        cls = type(self)
        check_hparams(f"{cls.__module__}.{cls.__qualname__}", checkpoint.get("hyper_parameters") or {}, self.hparams)

    def example_normal(self, index: torch.Tensor, shape: tuple[int, ...], stream: int = 0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """(len(index), *shape) standard normals, float32 on the module's device (see the class)."""
        z = draw_normal(index, tuple(shape), seed=self.noise_seed, step=int(self.global_step), stream=stream,
                        generator=generator)
        return z.to(self.device)

    def example_uniform(self, index: torch.Tensor, shape: tuple[int, ...], stream: int = 0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """(len(index), *shape) Uniform(0, 1), float32 on the module's device (see the class)."""
        u = draw_uniform(index, tuple(shape), seed=self.noise_seed, step=int(self.global_step), stream=stream,
                         generator=generator)
        return u.to(self.device, torch.float32)

    def adamw_warmup_cosine(self) -> dict:
        """The suite's default optimizer: AdamW on every parameter at ``hparams.lr`` and
        ``hparams.weight_decay``, with ``warmup_cosine`` over ``hparams.warmup_steps``."""
        h = self.hparams
        return self.warmup_cosine(torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay),
                                  h.warmup_steps)

    def warmup_cosine(self, optimizer: torch.optim.Optimizer, warmup_steps: int) -> dict:
        """Lightning's optimizer config with a per-step schedule: linear warm-up over
        min(warmup_steps, max_steps / 10) steps, then cosine decay to 10% of the base rate at max_steps."""
        max_steps = self.trainer.max_steps if self.trainer is not None else -1
        total = int(max_steps) if max_steps and max_steps > 0 else 10_000
        warm = max(min(warmup_steps, total // 10), 1)
        return per_step(optimizer, lambda step: lr_factor(step, warm, total, floor=0.1))
