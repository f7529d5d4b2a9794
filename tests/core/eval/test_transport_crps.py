"""Transport cost and CRPS against exact values."""

import math

import pytest
import torch

from core.eval.crps import crps_gaussian, crps_samples, normalized_crps
from core.eval.transport import path_energy, resample_path, transport_cost


def _line(times, a, b):
    tau = ((times[0] - times) / (times[0] - times[-1])).reshape(-1, 1, 1)
    return a + tau * (b - a)


def test_straight_constant_speed_path_costs_one_on_any_grid():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, -4.0]])
    for times in (torch.linspace(1.0, 0.001, 7), torch.tensor([1.0, 0.9, 0.5, 0.45, 0.1, 0.001])):
        assert transport_cost(_line(times, a, b), times).item() == pytest.approx(1.0, abs=1e-5)


def test_semicircle_costs_pi_squared_over_four():
    """Constant-speed semicircle of radius r: energy (pi r)^2, chord^2 = (2r)^2 -> pi^2 / 4."""
    times = torch.linspace(1.0, 0.0, 2001, dtype=torch.float64)
    ang = math.pi * (1 - times)
    path = torch.stack([torch.cos(ang), torch.sin(ang)], -1).reshape(-1, 1, 2) * 2.0
    assert transport_cost(path, times, n_grid=1000).item() == pytest.approx(math.pi**2 / 4, rel=1e-4)


def test_resampling_keeps_a_piecewise_linear_path_and_detours_cost_more():
    times = torch.tensor([1.0, 0.5, 0.0])
    path = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]])
    p = resample_path(path, times, n_grid=4)
    torch.testing.assert_close(p[2], path[1])
    torch.testing.assert_close(p[1], torch.tensor([[0.5, 0.5]]))
    # energy 2 * |(1,1)|^2 / (1/2) = 8, chord^2 = 4
    assert path_energy(p).item() == pytest.approx(8.0)
    assert transport_cost(path, times).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="path must be"):
        resample_path(torch.zeros(3, 2), times)


def test_crps_matches_brute_force_and_point_forecast():
    g = torch.Generator().manual_seed(0)
    s, y = torch.randn(7, 3, generator=g), torch.randn(3, generator=g)
    brute = (s - y).abs().mean(0) - 0.5 * (s[:, None] - s[None]).abs().mean((0, 1))
    torch.testing.assert_close(crps_samples(s, y), brute)
    fair = (s - y).abs().mean(0) - 0.5 * (s[:, None] - s[None]).abs().sum((0, 1)) / (7 * 6)
    torch.testing.assert_close(crps_samples(s, y, fair=True), fair)
    torch.testing.assert_close(crps_samples(torch.full((1, 3), 2.0), y), (2.0 - y).abs())


def test_crps_of_many_gaussian_samples_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    mu, sigma, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]), torch.tensor([0.3, -0.5])
    s = mu + sigma * torch.randn(40000, 2, generator=g, dtype=torch.float64).float()
    torch.testing.assert_close(crps_samples(s, y, fair=True), crps_gaussian(mu, sigma, y), atol=5e-3, rtol=0)
    # known value: CRPS(N(0,1), 0) = 2 phi(0) - 1/sqrt(pi) = (sqrt 2 - 1) / sqrt(pi)
    assert crps_gaussian(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0)).item() == pytest.approx(
        (math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-6)
    assert normalized_crps(torch.ones(1, 2) * 2, torch.tensor([1.0, -1.0])).item() == pytest.approx(2.0)
