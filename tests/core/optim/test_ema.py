"""core/optim/ema.py: the one EMA rule (warm-up decay and in-place update), shared by callbacks/ema.py,
modules/t2i.py and modules/diffusion_rl.py."""

from __future__ import annotations

import torch

from core.optim.ema import ema_decay, ema_update_


def test_warmup_decay_by_hand():
    assert ema_decay(0.999, 1) == 2 / 11 and ema_decay(0.999, 8) == 9 / 18
    assert ema_decay(0.9, 10_000) == 0.9 and ema_decay(0.9) == 0.9


def test_update_is_the_convex_combination_and_casts_values():
    avg = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])]
    vals = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([[3.0]])]
    ema_update_(avg, vals, 0.75)
    torch.testing.assert_close(avg[0], torch.tensor([0.25, 1.5]))
    torch.testing.assert_close(avg[1], torch.tensor([[1.5]]))
    assert avg[0].dtype == torch.float32


def test_repeated_updates_converge_geometrically():
    avg, target = [torch.zeros(3)], [torch.ones(3)]
    for _ in range(20):
        ema_update_(avg, target, 0.5)
    torch.testing.assert_close(avg[0], torch.full((3,), 1 - 0.5**20))
