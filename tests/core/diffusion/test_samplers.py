"""Samplers with the exact score of a Gaussian target reproduce its mean and covariance."""

import pytest
import torch

from core.utils.nfe import EvalCounter
from core.diffusion.processes import OU, VP, LinearPath
from core.diffusion.solvers import euler_maruyama, ode_heun, sample_process, time_grid

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[0.5, 0.3], [0.3, 0.4]])


def gaussian_score(process):
    """grad log p_t for x0 ~ N(MEAN, COV): x_t ~ N(a MEAN, a^2 COV + s^2 I)."""

    def score(x, t):
        a, s = process.alpha(t[:1]), process.sigma(t[:1])
        cov_t = a**2 * COV + s**2 * torch.eye(2)
        return -(x - a * MEAN) @ torch.linalg.inv(cov_t)

    return score


@pytest.mark.parametrize("process", [VP(), OU(T=8.0), LinearPath(t_max=0.999)], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("sampler,steps", [("em", 500), ("euler", 500), ("heun", 100)])
def test_gaussian_target(process, sampler, steps):
    gen = torch.Generator().manual_seed(0)
    res = sample_process(process, gaussian_score(process), (40_000, 2), steps, sampler=sampler, generator=gen,
                         grid="quadratic" if sampler == "em" else "uniform")
    x = res.x
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), COV, atol=0.04, rtol=0)


def test_heun_is_second_order():
    """Halving the step of Heun on the PF-ODE cuts the error about 4x (Euler: 2x)."""
    process = VP()
    score = gaussian_score(process)
    x_ref = None
    errors = {}
    for steps in (400, 10, 20):
        gen = torch.Generator().manual_seed(1)
        res = sample_process(process, score, (256, 2), steps, sampler="heun", generator=gen)
        if x_ref is None:
            x_ref = res.x
        else:
            errors[steps] = float((res.x - x_ref).norm(dim=1).mean())
    assert 3.0 < errors[10] / errors[20] < 5.0


def test_counter_trajectory_and_callback():
    counter, seen = EvalCounter(), []
    x = torch.zeros(7, 3)
    times = time_grid(1.0, 0.0, 5)
    res = ode_heun(x, times, drift=lambda x, t: torch.ones_like(x), counter=counter, return_trajectory=True,
                   callback=lambda i, t, x: seen.append(i))
    assert res.nfe == counter.calls == 9  # 2 per step, final step to t=0 is plain Euler
    assert counter.items == 9 * 7
    assert len(res.trajectory) == 6 and seen == [0, 1, 2, 3, 4]
    torch.testing.assert_close(res.x, torch.full((7, 3), -1.0))


def test_tuple_state():
    """A (x, v) state integrates leaf-wise: d(x, v)/dt = (v, -x) is a rotation."""
    x, v = torch.ones(4, 1), torch.zeros(4, 1)
    times = torch.linspace(0.0, torch.pi / 2, 201)
    res = euler_maruyama((x, v), times, drift=lambda s, t: (s[1], -s[0]), diffusion=lambda t: (0.0, 0.0))
    torch.testing.assert_close(res.x[0], torch.zeros(4, 1), atol=0.02, rtol=0)
    torch.testing.assert_close(res.x[1], -torch.ones(4, 1), atol=0.02, rtol=0)


def test_bad_grid():
    with pytest.raises(ValueError, match="steps"):
        time_grid(1.0, 0.0, 0)
