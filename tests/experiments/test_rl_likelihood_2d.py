"""The exact reference of rl_likelihood_2d (probability-flow ODE log-likelihood) against a closed form."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from experiments.rl_likelihood_2d import _parse_estimators, claims, error_stats, exact_log_likelihood
from suite.results import VariantResult


def test_exact_log_likelihood_of_gaussian_flow_is_the_gaussian_density():
    # x0 ~ N(m, s^2 I): the exact velocity's ODE maps N(0, I) at t=1 to N(m, s^2 I) at t=0
    m, s = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.6

    def v(x, t):
        tb = t[:, None]
        c = (1 - tb) ** 2 * s**2 + tb**2
        return (tb - (1 - tb) * s**2) * (x - (1 - tb) * m) / c - m

    x0 = torch.tensor([[0.5, -1.0], [1.2, 0.3], [-0.7, -2.0]], dtype=torch.float64)
    expect = -((x0 - m) ** 2).sum(1) / (2 * s**2) - math.log(2 * math.pi * s**2)
    torch.testing.assert_close(exact_log_likelihood(v, x0, 60), expect, atol=1e-5, rtol=0)


def test_error_stats_and_estimator_specs():
    exact = torch.tensor([0.0, 1.0, 2.0, 3.0])
    stats = error_stats(exact + 0.5, exact)
    assert stats["bias"] == pytest.approx(0.5) and stats["var_err"] == pytest.approx(0.0, abs=1e-12)
    assert stats["rmse"] == pytest.approx(0.5) and stats["corr"] == pytest.approx(1.0)
    assert _parse_estimators({"a": {"proposal": "loguniform"}})["a"]["weighting"] == "elbo"
    with pytest.raises(ValueError, match="unknown keys"):
        _parse_estimators({"a": {"mc": 3}})


def test_claim_compares_error_variances(tmp_path):
    m = {"test/claim_budget": 10, "test/n_samples": 100, "test/claim_var_elbo": 0.2, "test/claim_var_per_step": 0.3,
         "test/elbo_is@K10/bias": 0.0, "test/per_step@K10/bias": 0.1,
         "test/claim_var_ratio_lo": 0.5, "test/claim_var_ratio_hi": 0.9, "test/claim_var_diff_se": 0.02}
    cfg = SimpleNamespace(job={"claim_estimator": "elbo_is"})
    claim = claims({"main": VariantResult("main", m, tmp_path)}, cfg)["elbo_lower_variance"]
    assert claim.holds and claim.value == 0.2 and "n=100" in claim.detail
    m["test/claim_var_elbo"] = 0.29  # lower, but within 2 s.e. of per_step's: a tie
    assert not claims({"main": VariantResult("main", m, tmp_path)}, cfg)["elbo_lower_variance"].holds


def test_claim_pools_seeds(tmp_path):
    base = {"test/claim_budget": 10, "test/n_samples": 100, "test/elbo_is@K10/bias": 0.0,
            "test/per_step@K10/bias": 0.1, "test/claim_var_diff_se": 0.01}
    a = {**base, "test/claim_var_elbo": 0.1, "test/claim_var_per_step": 0.2}
    b = {**base, "test/claim_var_elbo": 0.35, "test/claim_var_per_step": 0.3}  # worse on this seed
    cfg = SimpleNamespace(job={"claim_estimator": "elbo_is"})
    claim = claims({"seed=0": VariantResult("seed=0", a, tmp_path), "seed=1": VariantResult("seed=1", b, tmp_path)},
                   cfg)["elbo_lower_variance"]
    # pooled difference -0.025, s.e. sqrt(2) * 0.01 / 2 = 0.0071: holds although seed 1 alone is worse
    assert claim.holds and claim.value == pytest.approx(0.225) and claim.reference == pytest.approx(0.25)
    assert "seed=1" in claim.detail and "2 seed(s)" in claim.detail
