"""core/diffusion/flow.py: the one rectified-flow sampler (ODE Euler / Heun, linear-g SDE, FlowGRPO SDE)."""

from __future__ import annotations

import pytest
import torch

from core.diffusion.flow import flow_sample, linear_sde
from core.diffusion.solvers import euler_maruyama, time_grid
from core.utils.nfe import EvalCounter


def _vel(x, t):
    return -x * t[:, None] + 0.3


def test_ode_solvers_count_calls_and_heun_is_exact_on_a_linear_in_time_velocity():
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = time_grid(1.0, 0.0, 4, dtype=torch.float64)
    counter = EvalCounter()
    euler = flow_sample(x, times, velocity=_vel, solver="euler", counter=counter)
    assert euler.nfe == 4 == counter.calls and euler.noisy_steps == [] and euler.trajectory is None
    heun = flow_sample(x, times, velocity=lambda x, t: (2 * t)[:, None].expand_as(x), solver="heun")
    assert heun.nfe == 7  # 2 per step, the last step (to t = 0) is Euler
    # trapezoid steps are exact for v = 2t: int_0.25^1 2t dt = 0.9375; the Euler step 0.25 -> 0 adds 2 * 0.25 * 0.25
    torch.testing.assert_close(heun.x, x - 1.0625)


def test_linear_sde_is_euler_maruyama_with_g_equal_a_t():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    times = time_grid(1.0, 0.0, 5)
    res = flow_sample(x, times, velocity=_vel3, solver="sde", sde_noise="linear", noise_level=0.5,
                      generator=torch.Generator().manual_seed(2), return_trajectory=True)
    drift, diffusion = linear_sde(_vel3, 0.5)
    ref = euler_maruyama(x, times, drift=drift, diffusion=diffusion, generator=torch.Generator().manual_seed(2))
    assert torch.equal(res.x, ref.x) and len(res.trajectory) == 6 and res.stds is None


def _vel3(x, t):
    return -x * t[:, None]


def test_flowgrpo_records_stds_only_on_noisy_steps_and_rows_restricts_the_batch():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    times = time_grid(1.0, 0.0, 4)
    res = flow_sample(x, times, velocity=_vel, solver="sde", sde_noise="flowgrpo", noise_level=0.7,
                      noisy_steps=[1, 2], generator=torch.Generator().manual_seed(4), return_trajectory=True)
    assert res.noisy_steps == [1, 2] and float(res.stds[0]) == 0.0 and float(res.stds[3]) == 0.0
    quiet = flow_sample(x, times, velocity=_vel, solver="sde", sde_noise="flowgrpo", noisy_steps=[])
    euler = flow_sample(x, times, velocity=_vel, solver="euler")
    torch.testing.assert_close(quiet.x, euler.x)
    sub = res.rows(torch.tensor([0, 2]))
    assert torch.equal(sub.x, res.x[[0, 2]]) and torch.equal(sub.trajectory[1], res.trajectory[1][[0, 2]])
    assert sub.noisy_steps == [1, 2] and sub.noise_level == 0.7


def test_bad_options_fail():
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="solver"):
        flow_sample(x, time_grid(1.0, 0.0, 2), velocity=_vel, solver="rk4")
    with pytest.raises(ValueError, match="decrease"):
        flow_sample(x, time_grid(0.0, 1.0, 2), velocity=_vel)
