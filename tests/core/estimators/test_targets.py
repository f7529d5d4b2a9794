"""Targets: potentials and gradients against brute force, log Z against quadrature, exact samplers."""

import math

import pytest
import torch

from core.utils.nfe import EvalCounter
from core.estimators.densities import (
    CountedTarget,
    Funnel,
    GaussianMixture,
    ManyWell,
    ModifiedMuellerBrown,
    Target,
    four_mode_gmm,
    gaussian,
    make_target,
)


def _grid_log_z(target: Target, lo: float, hi: float, n: int = 801) -> float:
    lin = torch.linspace(lo, hi, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(lin, lin, indexing="ij")
    v = target.potential(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
    return float(torch.logsumexp(-v, 0) + 2 * math.log(lin[1] - lin[0]))


def test_four_mode_gmm_density_and_log_z_by_quadrature():
    gmm = four_mode_gmm()
    assert gmm.log_z == 0.0
    assert abs(_grid_log_z(gmm, -8, 19)) < 1e-6
    # density at the first mean, by hand from the four Gaussians
    x = torch.zeros(1, 2, dtype=torch.float64)
    dens = 0.0
    for w, m, c in zip(gmm.weights, gmm.means, gmm.covs):
        diff = x[0] - m
        dens += float(
            w * torch.exp(-0.5 * diff @ torch.linalg.solve(c, diff)) / (2 * math.pi * c.det().sqrt())
        )
    assert math.isclose(float(torch.exp(-gmm.potential(x))), dens, rel_tol=1e-12)


def test_unnormalised_mixture_log_z_is_log_total_weight():
    gmm = GaussianMixture(
        [[0.0, 0.0], [3.0, 1.0]], [torch.eye(2).tolist(), (2 * torch.eye(2)).tolist()], [2.0, 5.0]
    )
    assert math.isclose(gmm.log_z, math.log(7.0))
    assert abs(_grid_log_z(gmm, -10, 14) - math.log(7.0)) < 1e-6


@pytest.mark.parametrize(
    "target", [four_mode_gmm(), gaussian(3, mean=0.5, variances=[1.0, 2.0, 0.5]), Funnel(5), ManyWell(4)]
)
def test_closed_form_gradients_match_autograd(target):
    x = torch.randn(16, target.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    auto = Target.grad_potential(target, x)
    assert torch.allclose(target.grad_potential(x), auto, atol=1e-9)


def test_noised_score_at_time_zero_is_minus_grad_and_matches_gaussian_convolution():
    gmm = four_mode_gmm()
    x = gmm.sample(32, torch.Generator().manual_seed(0))
    assert torch.allclose(gmm.noised_score(x, 0.0), -gmm.grad_potential(x), atol=1e-9)
    g = gaussian(2, mean=2.0, variances=[4.0, 0.25])
    t = 0.7
    a, h = math.exp(-t), 1 - math.exp(-2 * t)
    var = a**2 * torch.tensor([4.0, 0.25], dtype=torch.float64) + h
    expected = -(x - a * 2.0) / var
    assert torch.allclose(g.noised_score(x, t), expected, atol=1e-12)


def test_funnel_and_many_well_log_z():
    # funnel: substitute x_1 = e^{x_0/2} u so the grid resolves the neck (Jacobian e^{x_0/2})
    f = Funnel(2)
    x0 = torch.linspace(-25, 25, 1001, dtype=torch.float64)
    u = torch.linspace(-10, 10, 801, dtype=torch.float64)
    g0, gu = torch.meshgrid(x0, u, indexing="ij")
    pts = torch.stack([g0.reshape(-1), (torch.exp(g0 / 2) * gu).reshape(-1)], 1)
    log_int = -f.potential(pts) + g0.reshape(-1) / 2
    log_z = torch.logsumexp(log_int, 0) + math.log(x0[1] - x0[0]) + math.log(u[1] - u[0])
    assert abs(float(log_z)) < 1e-6
    w = ManyWell(2)
    assert abs(_grid_log_z(w, -6, 6, 1201) - w.log_z) < 1e-6


def test_mueller_brown_log_z_matches_reference_constant():
    assert abs(ModifiedMuellerBrown().log_z - math.log(22340.9983)) < 1e-6


def test_exact_samplers_match_moments():
    gen = torch.Generator().manual_seed(0)
    gmm = four_mode_gmm()
    x = gmm.sample(40000, gen)
    mean = (gmm.mode_weights[:, None] * gmm.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.1)
    assert torch.allclose(gmm.recovered_mode_weights(x), gmm.mode_weights, atol=0.01)
    f = Funnel(3).sample(40000, gen)
    assert abs(float(f[:, 0].std()) - 3.0) < 0.05
    w = ManyWell(2).sample(40000, gen)
    # E[a] by quadrature on the double well
    a = torch.linspace(-6, 6, 20001, dtype=torch.float64)
    p = torch.softmax(-(a**4) + 6 * a**2 + 0.5 * a, 0)
    assert abs(float(w[:, 0].mean()) - float((p * a).sum())) < 0.05


def test_counted_target_charges_one_call_per_row_and_evaluation():
    counter = EvalCounter()
    t = CountedTarget(four_mode_gmm(), counter)
    x = torch.zeros(7, 2, dtype=torch.float64)
    t.potential(x)
    t.grad_potential(x)
    assert counter.items == 14 and counter.calls == 2 and t.oracle_calls == 14


def test_bad_inputs_fail_early():
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture([[0.0, 0.0]], [[1.0, 0.0]], [1.0])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]], [1.0])
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        four_mode_gmm().potential(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="unknown target"):
        make_target("nope")
