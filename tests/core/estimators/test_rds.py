"""Reverse-diffusion estimator: the Girsanov weight against the Gaussian-kernel ratio by brute force,
unbiasedness for any score on a Gaussian with known Z, score estimates against the closed form,
the inner MALA against the closed-form Gaussian posterior of x_0 given x_t, and the oracle counts."""

import math

import pytest
import torch

from core.estimators.logmeanexp import summarize_log_weights
from core.estimators.rds import (
    ExactMixtureScore,
    SNISMALAScore,
    SNISScore,
    ULAPosteriorScore,
    forward_time_grid,
    mala_on_posterior,
    reverse_diffusion_log_z,
)
from core.estimators.densities import CountedTarget, GaussianMixture, four_mode_gmm, gaussian


def _log_normal(x, mean, var):
    return float(-0.5 * ((x - mean) ** 2).sum() / var - 0.5 * x.numel() * math.log(2 * math.pi * var))


def test_exact_weight_is_the_ratio_of_transition_kernels_brute_force():
    """log Z_hat = log[e^{-V(y_K)} R(path)/Q(path)] with R the score-free kernels and the start
    density written as gamma: replay 3 steps of a constant-in-x score by hand."""
    target = gaussian(2, mean=0.5, weight=2.0)
    T, delta, steps = 1.0, 0.1, 3

    def score(x, t):
        return torch.full_like(x, 0.3) * t

    res = reverse_diffusion_log_z(
        CountedTarget(target),
        score,
        1,
        T,
        delta,
        steps,
        weight="exact",
        generator=torch.Generator().manual_seed(3),
    )
    gen = torch.Generator().manual_seed(3)
    times = forward_time_grid(T, delta, steps)
    h_T = 1 - math.exp(-2 * T)
    y = math.sqrt(h_T) * torch.randn(1, 2, generator=gen, dtype=torch.float64)
    y0 = y.clone()
    log_r_over_q = 0.0
    for k in range(steps):
        t, dt = float(times[k]), float(times[k] - times[k + 1])
        xi = torch.randn(1, 2, generator=gen, dtype=torch.float64)
        var = math.exp(2 * dt) - 1
        y_next = math.exp(dt) * y + 2 * (math.exp(dt) - 1) * score(y, t) + math.sqrt(var) * xi
        log_r_over_q += _log_normal(y_next, math.exp(dt) * y, var)
        log_r_over_q -= _log_normal(y_next, math.exp(dt) * y + 2 * (math.exp(dt) - 1) * score(y, t), var)
        y = y_next
    # under R, y_K = e^{T - delta} y_0 + noise: Lebesgue start has Jacobian e^{-d (T - delta)}
    expected = -float(target.potential(y)) + 2 * (T - delta) - _log_normal(y0, 0.0, h_T) + log_r_over_q
    assert math.isclose(float(res.log_w[0]), expected, rel_tol=1e-10)


def test_paper_weight_equals_exact_weight_after_integrating_out_the_extra_noise():
    for dt in [1e-3, 0.1, 0.7]:
        rho = math.sqrt(2) * math.expm1(dt) / math.sqrt(math.expm1(2 * dt) * dt)
        # E_{xi''} e^{-sqrt(2 dt (1 - rho^2)) s.xi''} = e^{dt (1 - rho^2) |s|^2}
        assert math.isclose(dt * rho**2, 2 * math.expm1(dt) ** 2 / math.expm1(2 * dt), rel_tol=1e-10)
        assert math.isclose(
            math.sqrt(2 * dt) * rho, 2 * math.expm1(dt) / math.sqrt(math.expm1(2 * dt)), rel_tol=1e-10
        )


@pytest.mark.parametrize("weight", ["paper", "exact"])
def test_unbiased_for_a_poor_score_on_a_known_gaussian_z(weight):
    """E[Z_hat] = Z for any score: here zero score (the score-free process) on a 1-D Gaussian."""
    target = gaussian(1, mean=0.3, variances=[0.8], weight=5.0)
    res = reverse_diffusion_log_z(
        CountedTarget(target),
        lambda x, t: torch.zeros_like(x),
        40000,
        T=1.0,
        delta=0.01,
        steps=5,
        weight=weight,
        generator=torch.Generator().manual_seed(0),
    )
    s = summarize_log_weights(res.log_w.reshape(40, 1000), target.log_z)
    assert abs(s.ratio_mean - 1) < 1.96 * s.ratio_std / math.sqrt(40) + 0.01, s


def test_exact_score_rds_on_gaussian_within_ci_and_counts():
    target = gaussian(3, mean=1.0, variances=[1.0, 0.5, 2.0], weight=4.0)
    counted = CountedTarget(target)
    n, steps = 4000, 100
    res = reverse_diffusion_log_z(
        counted,
        ExactMixtureScore(target, counted),
        n,
        T=5.0,
        steps=steps,
        generator=torch.Generator().manual_seed(1),
    )
    assert res.oracle_calls == n * steps + n
    s = summarize_log_weights(res.log_w.reshape(20, 200), target.log_z)
    assert abs(s.ratio_mean - 1) < 1.96 * s.ratio_std / math.sqrt(20) + 0.01, s
    # with exact scores only the discretisation spreads the weights: finer grids flatten them
    coarse = reverse_diffusion_log_z(
        counted,
        ExactMixtureScore(target, counted),
        n,
        T=5.0,
        steps=20,
        generator=torch.Generator().manual_seed(1),
    )
    ess_coarse = summarize_log_weights(coarse.log_w.reshape(20, 200), target.log_z).ess_fraction
    assert s.ess_fraction > 0.2 and s.ess_fraction > 2 * ess_coarse


def test_snis_rds_on_gaussian_within_ci_and_counts():
    target = gaussian(2, mean=1.0, weight=3.0)
    counted = CountedTarget(target)
    n, steps, m = 2000, 20, 16
    gen = torch.Generator().manual_seed(2)
    res = reverse_diffusion_log_z(counted, SNISScore(counted, m, gen), n, steps=steps, generator=gen)
    assert res.oracle_calls == n * steps * m + n
    s = summarize_log_weights(res.log_w.reshape(20, 100), target.log_z)
    assert abs(s.ratio_mean - 1) < 1.96 * s.ratio_std / math.sqrt(20) + 0.02, s


def test_score_estimates_approach_the_exact_mixture_score():
    gmm = four_mode_gmm()
    gen = torch.Generator().manual_seed(0)
    x = 0.5 * gmm.sample(64, gen) + torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = math.log(2.0)  # x_t = x0 / 2 + sqrt(3/4) eps
    exact = gmm.noised_score(x, t)
    counted = CountedTarget(gmm)
    snis = SNISScore(counted, 4000, gen)(x, t)
    assert counted.oracle_calls == 64 * 4000
    assert (snis - exact).norm(dim=1).mean() < 0.05 * exact.norm(dim=1).mean() + 0.02
    counted = CountedTarget(gmm)
    ula = ULAPosteriorScore(counted, 300, 60, step_size=0.05, importance_samples=200, generator=gen)(x, t)
    assert counted.oracle_calls == 64 * (200 + 300 * 60)
    assert (ula - exact).norm(dim=1).mean() < 0.1 * exact.norm(dim=1).mean() + 0.05


def test_bad_settings_fail_early():
    with pytest.raises(ValueError, match="delta"):
        forward_time_grid(1.0, 2.0, 10)
    with pytest.raises(ValueError, match="weight"):
        reverse_diffusion_log_z(CountedTarget(gaussian(1)), lambda x, t: x, 2, weight="x")
    with pytest.raises(ValueError, match="num_samples"):
        SNISScore(CountedTarget(gaussian(1)), 0)


def _gaussian_posterior(target, centre, var):
    """Closed form of p(x_0 | x) ∝ N(x_0; m, C) N(x_0; centre, var I): precision C^{-1} + I / var,
    mean P^{-1} (C^{-1} m + centre / var)."""
    c_inv = torch.linalg.inv(target.covs[0])
    prec = c_inv + torch.eye(target.dim, dtype=torch.float64) / var
    cov = torch.linalg.inv(prec)
    return cov @ (c_inv @ target.means[0] + centre / var), cov


def _full_cov_target(d=3):
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return GaussianMixture(torch.linspace(-1, 1, d)[None], (a @ a.T / d + 0.3 * torch.eye(d))[None], [3.0])


@pytest.mark.parametrize("start", ["posterior", "one_point"])
def test_inner_mala_targets_the_gaussian_posterior(start):
    """From exact posterior draws, 10 MALA steps keep mean and covariance (invariance); from one
    point, 300 steps reach them. Moments against the closed form; every V / grad V counted."""
    target = _full_cov_target()
    t, n = 0.7, 20000
    var = math.expm1(2 * t)
    centre = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    mean, cov = _gaussian_posterior(target, centre, var)
    gen = torch.Generator().manual_seed(0)
    if start == "posterior":
        x0 = mean + torch.randn(n, 3, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
        steps = 10
    else:
        x0, steps = torch.zeros(n, 3, dtype=torch.float64), 300
    counted = CountedTarget(target)
    out, acc = mala_on_posterior(counted, x0, -target.potential(x0), centre.expand(n, 3), var, steps, 0.4, gen)
    assert counted.oracle_calls == n + 2 * n * steps
    assert 0.3 < acc < 0.95 and float((out != x0).any(1).double().mean()) > 0.5
    se = (torch.diagonal(cov) / n).sqrt()
    assert ((out.mean(0) - mean).abs() < 4 * se).all(), (out.mean(0), mean)
    tol = 0.04 * float(torch.diagonal(cov).max())
    assert torch.allclose(torch.cov(out.T), cov, atol=tol), (torch.cov(out.T), cov)


def test_snis_mala_score_beats_snis_at_equal_budget_in_d8_and_counts():
    """d = 8, t = 1: SNIS's proposal has ESS/M = [sigma^2 (sigma^2 + 2 s^2) / (sigma^2 + s^2)^2]^{d/2}
    ≈ 0.004; the inner MALA chains repair the posterior mean. Both against the closed-form score."""
    target = gaussian(8, mean=1.0)
    gen = torch.Generator().manual_seed(0)
    t, b = 1.0, 200
    x = math.exp(-t) * target.sample(b, gen) + math.sqrt(-math.expm1(-2 * t)) * torch.randn(
        b, 8, generator=gen, dtype=torch.float64
    )
    exact = target.noised_score(x, t)
    counted = CountedTarget(target)
    score = SNISMALAScore(counted, 64, 8, 20, step_size=0.3, generator=gen)
    mala = score(x, t)
    assert counted.oracle_calls == b * (64 + 8 * (1 + 2 * 20))
    assert 0.5 < score.acceptance < 1.0
    snis = SNISScore(CountedTarget(target), 64 + 8 * 41, gen)(x, t)
    err_mala = float((mala - exact).norm(dim=1).mean())
    err_snis = float((snis - exact).norm(dim=1).mean())
    assert err_mala < 0.5 * err_snis, (err_mala, err_snis)
    with pytest.raises(ValueError, match="SNISMALAScore"):
        SNISMALAScore(counted, 4, 0, 2)
