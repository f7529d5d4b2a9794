"""AIS: the weight recursion against a brute-force replay on 1-D, unbiasedness on Gaussians with
known Z, ULA's bias against MALA's, mode coverage, oracle counts, the Gaussian path action, and
log-mean-exp aggregation."""

import math

import pytest
import torch

from core.estimators.ais import (
    GeometricPath,
    QuadraticTiltPath,
    action_by_sampling,
    annealed_importance_sampling,
    empirical_w2_squared,
    gaussian_path_action,
    mode_coverage,
)
from core.estimators.logmeanexp import effective_sample_size, log_mean_exp, summarize_log_weights
from core.estimators.densities import CountedTarget, Funnel, GaussianMixture, four_mode_gmm, gaussian


def test_log_mean_exp_is_stable_and_exact():
    lw = torch.tensor([[1000.0, 1000.0 + math.log(3.0)], [-1000.0, -1000.0]], dtype=torch.float64)
    out = log_mean_exp(lw, dim=1)
    assert torch.allclose(out, torch.tensor([1000.0 + math.log(2.0), -1000.0], dtype=torch.float64))
    assert torch.allclose(effective_sample_size(torch.zeros(1, 5), dim=1), torch.tensor([5.0]))
    s = summarize_log_weights(torch.zeros(3, 4, dtype=torch.float64) + math.log(2.0), log_z_true=0.0)
    assert (
        math.isclose(s.ratio_mean, 2.0) and math.isclose(s.abs_log_error, math.log(2.0)) and s.ratio_std == 0
    )


def test_ais_weight_update_matches_brute_force_replay_in_1d():
    """Replay 3 ULA levels of the quadratic-tilt path by hand: log w = log Z_0 + sum of
    log f_{l+1}(x_l) - log f_l(x_l), x_{l+1} = x_l + h grad log f_{l+1}(x_l) + sqrt(2h) xi_l."""
    target = gaussian(1, mean=0.7, variances=[2.0], weight=1.5)
    path = QuadraticTiltPath(3, lambda0=4.0, power=2.0)
    h = 0.05
    res = annealed_importance_sampling(
        CountedTarget(target), path, 1, h, "ula", torch.Generator().manual_seed(5), max_step_ratio=1.0
    )

    def log_f(x, lam):  # e^{-V(x) - lam x^2 / 2}, V of 1.5 N(0.7, 2)
        return math.log(1.5) - 0.5 * math.log(2 * math.pi * 2.0) - (x - 0.7) ** 2 / 4.0 - lam * x * x / 2

    def grad_log_f(x, lam):
        return -(x - 0.7) / 2.0 - lam * x

    gen = torch.Generator().manual_seed(5)
    lams = [4.0 * (1 - l / 3) ** 2 for l in range(4)]
    x = 0.0
    log_w = log_f(0.0, 0.0) + 0.5 * math.log(2 * math.pi / 4.0)  # Laplace at the origin
    for l in range(3):
        log_w += log_f(x, lams[l + 1]) - log_f(x, lams[l])
        step = min(h, 1.0 / lams[l + 1]) if lams[l + 1] > 0 else h
        xi = float(torch.randn(1, 1, generator=gen, dtype=torch.float64))
        x = x + step * grad_log_f(x, lams[l + 1]) + math.sqrt(2 * step) * xi
    assert math.isclose(float(res.log_w[0]), log_w, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(float(res.x[0, 0]), x, rel_tol=1e-12, abs_tol=1e-12)


def test_ais_oracle_counts():
    target = gaussian(2)
    n, levels = 10, 7
    quad = CountedTarget(target)
    annealed_importance_sampling(quad, QuadraticTiltPath(levels), n, 0.01, "ula")
    assert quad.oracle_calls == 1 + n * levels  # V(0) once, one grad V per chain and level
    geo = CountedTarget(target)
    annealed_importance_sampling(geo, GeometricPath(levels), n, 0.01, "ula")
    assert geo.oracle_calls == 2 * n * levels  # V for the increment + grad V for the move
    mala = CountedTarget(target)
    annealed_importance_sampling(mala, GeometricPath(levels), n, 0.01, "mala")
    # V(x_0), grad V(x_0) once; V and grad V at each proposal
    assert mala.oracle_calls == 2 * n + 2 * n * levels


@pytest.mark.parametrize("path_kind", ["geometric", pytest.param("quadratic", marks=pytest.mark.slow)])
def test_ais_mala_estimates_known_gaussian_z_within_ci(path_kind):
    target = gaussian(3, mean=1.0, variances=[1.0, 0.5, 2.0], weight=4.0)
    path = (
        GeometricPath(300, ref_std=2.0)
        if path_kind == "geometric"
        else QuadraticTiltPath(1500, lambda0=100.0)
    )
    res = annealed_importance_sampling(
        CountedTarget(target), path, 3000, 0.05, "mala", torch.Generator().manual_seed(0)
    )
    s = summarize_log_weights(res.log_w.reshape(30, 100), target.log_z)
    half_width = 1.96 * s.ratio_std / math.sqrt(s.repeats)
    # MALA keeps each level invariant: unbiased up to the Laplace start of the quadratic path
    slack = 0.0 if path_kind == "geometric" else 0.05
    assert abs(s.ratio_mean - 1.0) < half_width + slack + 0.02, (s.ratio_mean, half_width)
    assert res.acceptance > 0.5


def test_ais_rejects_bad_step_settings():
    with pytest.raises(ValueError, match="transition"):
        annealed_importance_sampling(CountedTarget(gaussian(1)), GeometricPath(2), 2, 0.1, "hmc")
    with pytest.raises(ValueError, match="step_size"):
        annealed_importance_sampling(CountedTarget(gaussian(1)), GeometricPath(2), 2, -0.1)


def test_gaussian_path_action_closed_forms():
    # geometric path between N(0, 1) and N(m, 1) in d dims: pure translation, A = |m|^2 for beta = theta
    d, m = 5, 2.0
    act = gaussian_path_action(GeometricPath(10, ref_std=1.0), torch.full((d,), m), torch.ones(d))
    assert math.isclose(act, d * m * m, rel_tol=1e-6)
    # quadratic path on N(0, I): std(theta) = (1 + lambda0 (1 - theta)^2)^{-1/2}; A scales as d
    a1 = gaussian_path_action(QuadraticTiltPath(10, lambda0=100.0), torch.zeros(1), torch.ones(1))
    a4 = gaussian_path_action(QuadraticTiltPath(10, lambda0=100.0), torch.zeros(4), torch.ones(4))
    assert math.isclose(a4, 4 * a1, rel_tol=1e-9)
    th = torch.linspace(0, 1, 200001, dtype=torch.float64)
    std = (1 + 100.0 * (1 - th) ** 2) ** -0.5
    ds = torch.diff(std) / torch.diff(th)
    assert math.isclose(a1, float((ds**2).mean()), rel_tol=1e-3)


def test_empirical_w2_and_action_by_sampling_on_a_gaussian():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert math.isclose(empirical_w2_squared(x, y), 1.0)
    target = gaussian(1, mean=3.0)
    exact = gaussian_path_action(GeometricPath(64, ref_std=1.0), torch.full((1,), 3.0), torch.ones(1))
    est = action_by_sampling(
        CountedTarget(target),
        GeometricPath(64, ref_std=1.0),
        num_points=8,
        num_samples=400,
        mcmc_steps=40,
        step_size=0.2,
        generator=torch.Generator().manual_seed(0),
    )
    assert abs(est - exact) < 0.35 * exact, (est, exact)


def _full_cov_gaussian():
    """2 N((1, -0.5), C), C with eigenvalues 0.2 and 2.2 (the paper's fourth mode): Z = 2."""
    return GaussianMixture([[1.0, -0.5]], [[[1.2, -1.0], [-1.0, 1.2]]], [2.0])


def test_ula_is_biased_and_mala_is_not_on_a_gaussian_with_known_z():
    """Geometric path (exact start, Z_0 = 1), step h = 0.1 on a target of precision up to 5: ULA's
    levels are too wide (variance 1 / (p (1 - h p / 2))) and its mean log Z_hat misses log Z by many
    standard errors; MALA's Metropolis test removes the bias (Z_hat/Z = 1 within Monte-Carlo error)."""
    target = _full_cov_gaussian()
    errors = {}
    for transition in ("ula", "mala"):
        res = annealed_importance_sampling(
            CountedTarget(target),
            GeometricPath(200, ref_std=3.0),
            4000,
            0.1,
            transition,
            torch.Generator().manual_seed(0),
        )
        s = summarize_log_weights(res.log_w.reshape(40, 100), target.log_z)
        dlog = s.log_z_hat - target.log_z
        errors[transition] = (float(dlog.mean()), float(dlog.std()) / math.sqrt(40), s)
    ula_mean, ula_se, _ = errors["ula"]
    assert ula_mean < -0.08 and abs(ula_mean) > 5 * ula_se, errors["ula"][:2]
    _, _, mala = errors["mala"]
    assert abs(mala.ratio_mean - 1) < 2.6 * mala.ratio_std / math.sqrt(mala.repeats), mala


def test_mala_is_the_default_and_counts_two_calls_per_level():
    target = gaussian(2)
    n, levels = 10, 7
    quad = CountedTarget(target)
    gen = torch.Generator().manual_seed(1)
    res = annealed_importance_sampling(quad, QuadraticTiltPath(levels), n, 0.01, generator=gen)
    explicit = annealed_importance_sampling(
        CountedTarget(target), QuadraticTiltPath(levels), n, 0.01, "mala", torch.Generator().manual_seed(1)
    )
    assert torch.equal(res.log_w, explicit.log_w)
    # V(0) once; grad V and V at x_0; V and grad V at each proposal
    assert quad.oracle_calls == 1 + 2 * n + 2 * n * levels


def test_mode_coverage_counts_nearest_modes_and_sees_a_stuck_path():
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 1.0], [9.0, -1.0], [8.0, 1.0], [0.5, 0.0]], dtype=torch.float64)
    assert mode_coverage(x, modes).tolist() == [0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="mode_coverage"):
        mode_coverage(x, modes[:, :1])
    # the quadratic tilt from the origin stays in the mode at the origin: coverage ~ one-hot
    gmm = four_mode_gmm()
    res = annealed_importance_sampling(
        CountedTarget(gmm), QuadraticTiltPath(200), 256, 0.01, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(res.coverage.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert float(res.coverage[0]) > 0.95
    assert annealed_importance_sampling(CountedTarget(Funnel(3)), GeometricPath(3), 4, 0.01).coverage is None
