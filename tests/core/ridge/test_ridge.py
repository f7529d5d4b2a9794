"""Ridge geometry against autograd Hessians of log p_t and against the two-point case."""

import math

import pytest
import torch

from core.ridge.phases import detect_phases, displacement_shares, moving_average
from core.diffusion.processes import OU
from core.ridge.geometry import (
    empirical_log_density,
    empirical_score,
    nearest_neighbour_spacing,
    posterior_moments,
    project_to_ridge,
    ridge_geometry,
    time_for_noise_to_signal,
    unique_with_weights,
)


def _autograd_score_hessian(x, train, process, t, weights=None):
    scores, hessians = [], []
    for xi in x:

        def logp(v):
            return empirical_log_density(v[None], train, process, t, weights)[0]

        v = xi.clone().double().requires_grad_(True)
        scores.append(torch.autograd.grad(logp(v), v)[0])
        hessians.append(torch.autograd.functional.hessian(logp, xi.double()))
    return torch.stack(scores), torch.stack(hessians)


@pytest.mark.parametrize("t", [0.05, 0.4, 2.0])
def test_score_and_hessian_match_autograd(t):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(9, 4, generator=g, dtype=torch.float64) * 1.5
    weights = torch.rand(9, generator=g, dtype=torch.float64) + 0.1
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    process = OU(T=10.0)
    # tiny chunks exercise the streaming log-sum-exp across training and query chunks
    geo = ridge_geometry(x, train, process, t, d_star=2, weights=weights, chunk=2, query_chunk=3)
    s_ref, h_ref = _autograd_score_hessian(x, train, process, t, weights)
    torch.testing.assert_close(geo.score, s_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(geo.hessian, h_ref, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(empirical_score(x, train, process, t, weights, chunk=4), s_ref)


def test_log_density_matches_brute_force_mixture():
    g = torch.Generator().manual_seed(1)
    train, x = (
        torch.randn(6, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 3, generator=g, dtype=torch.float64),
    )
    process, t = OU(), 0.3
    a, h = math.exp(-t), 1 - math.exp(-2 * t)
    comp = torch.distributions.MultivariateNormal(a * train, h * torch.eye(3, dtype=torch.float64))
    ref = torch.logsumexp(comp.log_prob(x[:, None, :]), 1) - math.log(6)
    torch.testing.assert_close(empirical_log_density(x, train, process, t, chunk=4), ref)


def test_per_query_times_match_scalar_times():
    g = torch.Generator().manual_seed(2)
    train, x = torch.randn(7, 2, generator=g), torch.randn(4, 2, generator=g)
    t = torch.tensor([0.1, 0.5, 1.0, 3.0])
    mom = posterior_moments(x, train, OU(), t)
    for i in range(4):
        one = posterior_moments(x[i : i + 1], train, OU(), float(t[i]))
        torch.testing.assert_close(mom.cov[i], one.cov[0])
        torch.testing.assert_close(mom.mean[i], one.mean[0])


def test_two_point_ridge_is_the_line_through_the_points():
    """Two isotropic points: the 1-D ridge of p_t is the whole line through a_t x_1 and a_t x_2."""
    process, t = OU(), 0.7
    a = math.exp(-t)
    p1, p2 = (
        torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64),
        torch.tensor([-2.0, 0.5, 1.5], dtype=torch.float64),
    )
    train = torch.stack([p1, p2])
    direction = (p1 - p2) / (p1 - p2).norm()
    lam = torch.tensor([-0.6, -0.3, 0.2, 0.5, 0.9, 1.4], dtype=torch.float64)
    on_line = a * p2 + lam[:, None] * a * (p1 - p2)
    geo = ridge_geometry(on_line, train, process, t, d_star=1)
    assert bool(geo.on_ridge(tol=1e-6).all())
    # normal space = the orthogonal complement of the line's direction
    torch.testing.assert_close(
        geo.normal_basis.transpose(1, 2) @ direction, torch.zeros(6, 2, dtype=torch.float64)
    )
    # the normal eigenvalues are exactly -1/h (no spread of the points across the line)
    h = 1 - math.exp(-2 * t)
    torch.testing.assert_close(geo.eigenvalues[:, :2], torch.full((6, 2), -1 / h, dtype=torch.float64))
    # off the line: not on the ridge, and SCMS projects orthogonally onto the line
    off = on_line + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64).cross(direction, dim=0)
    assert not bool(ridge_geometry(off, train, process, t, 1).on_ridge(1e-3).any())
    proj = project_to_ridge(off, train, process, t, d_star=1, tol=1e-8)
    assert bool(proj.converged.all())
    torch.testing.assert_close(proj.x, on_line)
    torch.testing.assert_close(proj.offset, (off - on_line).norm(dim=1))


def test_components_split_a_vector():
    g = torch.Generator().manual_seed(3)
    train, x, v = (torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (20, 6, 6))
    geo = ridge_geometry(x, train, OU(), 0.5, d_star=3)
    n, tg = geo.normal_component(v), geo.tangent_component(v)
    torch.testing.assert_close(n + tg, v)
    torch.testing.assert_close((n * tg).sum(1), torch.zeros(6, dtype=torch.float64), atol=1e-10, rtol=0)
    assert bool((geo.eigengap >= 0).all())


def test_helpers():
    process = OU()
    t = time_for_noise_to_signal(process, 0.5)
    assert math.isclose(math.sqrt(1 - math.exp(-2 * t)) / math.exp(-t), 0.5, rel_tol=1e-8)
    pts, w = unique_with_weights(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    assert pts.shape == (2, 2) and torch.allclose(
        w.sort().values, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    )
    assert nearest_neighbour_spacing(torch.tensor([[0.0], [1.0], [3.0]])) == 1.0
    with pytest.raises(ValueError, match="d_star"):
        ridge_geometry(torch.zeros(2, 3), torch.zeros(4, 3), process, 0.5, d_star=3)
    with pytest.raises(ValueError, match="need x"):
        posterior_moments(torch.zeros(2, 3), torch.zeros(4, 2), process, 0.5)


def test_phase_detection_on_synthetic_series():
    k = torch.arange(60, dtype=torch.float64)
    times = torch.exp(-k / 10)
    distance = torch.where(
        k < 20, torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    )
    normal_share = torch.full((60,), 0.5, dtype=torch.float64)
    normal_share[25:35] = 0.9
    normal_share[45:] = 0.1
    ph = detect_phases(distance, normal_share, times, 0.5, 0.7, 0.7, smooth=1, persist=3)
    assert (ph.reach, ph.align, ph.align_end, ph.slide) == (20, 25, 35, 45) and ph.ordered
    assert moving_average(torch.ones(5), 3).tolist() == [1.0] * 5
    dx = torch.tensor([[3.0, 4.0]])
    ns, ts = displacement_shares(dx, torch.tensor([[3.0, 0.0]]), d_star=1)
    assert math.isclose(ns, 9 / 25) and math.isclose(ts, 16 / 25)


@pytest.mark.slow
def test_large_case_runs_in_seconds():
    """n = 5000 training points in d = 32, 2000 queries (the size the issue asks for)."""
    import time

    g = torch.Generator().manual_seed(0)
    train, x = torch.randn(5000, 32, generator=g), torch.randn(2000, 32, generator=g)
    t0 = time.perf_counter()
    geo = ridge_geometry(x, train, OU(), 0.5, d_star=25)
    assert time.perf_counter() - t0 < 15.0
    assert geo.eigenvalues.shape == (2000, 32) and torch.isfinite(geo.eigenvalues).all()
