"""Exponential moving average of weights: the one EMA rule of the suite.

theta_ema <- theta_ema + (1 - decay) (theta - theta_ema) = decay theta_ema + (1 - decay) theta after every
optimizer step, with the usual warm-up decay_k = min(decay, (1 + k) / (10 + k)) so that early averages
are not dominated by the initial weights (k = updates so far). Used by callbacks/ema.py (the swap-in
EMA of any module), modules/t2i.py (the EMA copy of the flow network) and modules/diffusion_rl.py
(an EMA old policy).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def ema_decay(decay: float, updates: int | None = None) -> float:
    """The decay of update k = ``updates`` (the caller's count: the first update after one optimizer
    step has k = 1) with the warm-up; ``decay`` itself when None (no warm-up)."""
    if updates is None:
        return decay
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def ema_update_(averages: Iterable[torch.Tensor], values: Iterable[torch.Tensor], decay: float) -> None:
    """In place: average <- average + (1 - decay) (value - average) for every pair (one lerp each);
    values are cast to the averages' dtype."""
    for avg, value in zip(averages, values):
        avg.lerp_(value.detach().to(avg.dtype), 1.0 - decay)
