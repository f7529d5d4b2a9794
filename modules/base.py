"""Base LightningModule of the suite: keyed per-example noise and the evaluation counter."""

from __future__ import annotations

import lightning as L
import torch

from core.nfe import EvalCounter
from core.noise import example_normal, example_uniform


class GenLabModule(L.LightningModule):
    """Adds what every trained module of the suite shares.

    * ``noise_seed``: set by run.py from ``seed``; noise drawn through :meth:`example_normal` and
      :meth:`example_uniform` is a function of (noise_seed, global_step, example index, stream)
      only, so a global batch gets identical noise on 1 or N processes and after a resume.
    * ``nfe``: the suite's one :class:`~core.nfe.EvalCounter` for this module's network evaluations.
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
