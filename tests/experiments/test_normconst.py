"""normconst experiments: the RDS budget split spends exactly the oracle calls it promises, and the
claims ``rds_accurate_in_higher_dims`` and ``rds_beats_ais_at_budget`` read the right metrics."""

import pytest
import torch
from omegaconf import OmegaConf

from core.estimators.densities import random_mixture
from experiments.normconst import claims as gmm_claims
from experiments.normconst_gmm_dims import claims as dims_claims
from experiments.normconst_sweep import estimator_options, rds_split, run_estimator
from suite.results import VariantResult


@pytest.mark.parametrize("proposals", [None, 40])
@pytest.mark.parametrize("name", ["rds_snis", "rds_snis_mala"])
def test_rds_budget_split_is_spent_exactly(name, proposals):
    target = random_mixture(3, [1.0, 2.0, 3.0], radius=4.0, min_separation=4.0)
    opts = estimator_options(rds_steps=7, rds_T=2.0, rds_proposals=proposals, rds_inner_steps=3)
    inner = 1 + 2 * 3 if name == "rds_snis_mala" else 0
    for budget in (500, 2000):
        k, m, j = rds_split(budget, opts, inner)
        run = run_estimator(name, target, budget, 5, torch.Generator().manual_seed(0), opts)
        assert run.calls == 1 + k * (m + j * inner) <= budget
        assert run.extra["proposals_per_step"] == m and run.extra["steps"] == k
        if proposals is None:
            assert k == 7 and budget - run.calls < 7 + 1
        else:
            assert m == proposals
    with pytest.raises(ValueError, match="job.budgets"):
        rds_split(20, estimator_options(rds_steps=7, rds_inner_steps=3), 7)


def test_random_mixture_is_fixed_by_its_seed_and_separated():
    a, b = random_mixture(8, [0.5, 1.0, 1.5, 2.0]), random_mixture(8, [0.5, 1.0, 1.5, 2.0])
    assert torch.equal(a.means, b.means) and torch.equal(a.covs, b.covs)
    assert float(torch.pdist(a.means).min()) >= 6.0 and abs(a.log_z - torch.log(torch.tensor(5.0))) < 1e-12
    eig = torch.linalg.eigvalsh(a.covs)
    assert float(eig.min()) >= 0.5 - 1e-9 and float(eig.max()) <= 2.0 + 1e-9
    assert float((a.covs - torch.diag_embed(torch.diagonal(a.covs, dim1=1, dim2=2))).abs().max()) > 0.05


def _dims_metrics(err_snis, tv_snis, err_mala, tv_mala):
    m = {}
    for v, e, t in (("rds_snis", err_snis, tv_snis), ("rds_snis_mala", err_mala, tv_mala)):
        m[f"test/d=8/{v}@100000/abs_log_z_error"] = e
        m[f"test/d=8/{v}@100000/weights_tv"] = t
        m[f"test/d=8/{v}@100000/ess_fraction"] = 0.1
    return {"main": VariantResult("main", m, dir=None)}


def test_rds_accurate_in_higher_dims_uses_the_better_variant_and_both_thresholds():
    cfg = OmegaConf.create({"job": {"repeats": 4, "chains": 64}})
    key = "rds_accurate_in_higher_dims"
    held = dims_claims(_dims_metrics(0.9, 0.05, 0.2, 0.08), cfg)[key]
    assert held.holds and held.value == 0.2 and "rds_snis_mala" in held.detail
    assert not dims_claims(_dims_metrics(0.9, 0.05, 0.2, 0.12), cfg)[key].holds  # TV too large
    assert not dims_claims(_dims_metrics(0.35, 0.01, 0.5, 0.01), cfg)[key].holds  # error too large
    missing = dims_claims({"main": VariantResult("main", {}, dir=None)}, cfg)[key]
    assert not missing.holds and missing.value is None


def test_rds_beats_ais_compares_against_mala_ais_and_reports_coverage():
    b = 400
    rds = f"test/rds_snis@{b}"
    m = {f"{rds}/z_ratio_mean": 1.0, f"{rds}/z_ratio_std": 0.1, f"{rds}/abs_log_z_error": 0.1}
    m[f"{rds}/weights_tv"] = 0.01
    for p, err in (("quadratic", 2.0), ("geometric", 0.3)):
        m[f"test/ais_{p}@{b}/abs_log_z_error"] = err
        m.update({f"test/ais_{p}@{b}/mode_coverage_{k}": c for k, c in enumerate([1.0, 0.0, 0.0, 0.0])})
    variants = {"main": VariantResult("main", m, dir=None)}
    job = {"budgets": [b], "repeats": 4, "chains": 8, "ais_ref_std": 5.0, "ais_transition": "mala"}
    cfg = OmegaConf.create({"job": job})
    claim = gmm_claims(variants, cfg)["rds_beats_ais_at_budget"]
    assert claim.holds and claim.reference == 0.3 and "quadratic [1.00, 0.00, 0.00, 0.00]" in claim.detail
    cfg.job.ais_transition = "ula"
    assert gmm_claims(variants, cfg)["rds_beats_ais_at_budget"].value is None
