"""Claims of rl_geneval (experiments/rl_geneval.py) on hand-set variant metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.rl_geneval import claims, combination_table
from suite.results import VariantResult

DESIGNS = {
    "epg_per_step": ("epg", "per_step", "sde"),
    "epg_elbo": ("epg", "elbo", "sde"),
    "ppo_clip_per_step": ("ppo_clip", "per_step", "sde"),
    "ppo_clip_elbo": ("ppo_clip", "elbo", "sde"),
    "epg_elbo_ode": ("epg", "elbo", "ode"),
    "nft": ("nft", "none", "sde"),
}


def cfg(tmp_path: Path):
    return OmegaConf.create({"module": {"objective": "epg", "likelihood": "elbo", "sampler": "sde"},
                             "callbacks": {"watch": {"target_gain": 0.2}}, "output_dir": str(tmp_path)})


def variant(name: str, seed: int, geneval: float, fid_ratio: float = 1.1, nfe_to_target=float("nan")):
    o, lk, s = DESIGNS[name]
    metrics = {"test/geneval": geneval, "test/geneval_se": 0.02, "test/base_geneval": 0.25,
               "test/base_geneval_se": 0.02, "test/fid_ratio": fid_ratio, "test/nfe": 1000.0,
               "test/nfe_to_base_plus_0.2": nfe_to_target}
    over = {"module.objective": o, "module.likelihood": lk, "module.sampler": s}
    return f"{name}__seed={seed}", VariantResult(f"{name}__seed={seed}", metrics, Path("."), over, seed)


def study(values: dict[str, list[float]], **kw) -> dict[str, VariantResult]:
    return dict(variant(name, i, g, **kw) for name, gs in values.items() for i, g in enumerate(gs))


def test_all_claims_hold_when_elbo_wins_clearly(tmp_path):
    v = study({"epg_per_step": [0.30, 0.32], "epg_elbo": [0.40, 0.42], "ppo_clip_per_step": [0.31, 0.31],
               "ppo_clip_elbo": [0.41, 0.39], "epg_elbo_ode": [0.38, 0.38], "nft": [0.35, 0.36]})
    out = claims(v, cfg(tmp_path))
    assert all(c.holds for c in out.values()), {k: c.detail for k, c in out.items()}
    assert out["elbo_beats_per_step"].value == pytest.approx({"epg": 0.10, "ppo_clip": 0.09})
    assert out["improves_base"].value == pytest.approx(0.41 - 0.25)
    assert "seeds SE" in out["elbo_beats_per_step"].detail  # two seeds: spread over seeds
    assert (tmp_path / "study_table.csv").exists()


def test_loss_gap_larger_than_estimator_gain_fails_that_claim_only(tmp_path):
    v = study({"epg_per_step": [0.30], "epg_elbo": [0.33], "ppo_clip_per_step": [0.20], "ppo_clip_elbo": [0.26]})
    out = claims(v, cfg(tmp_path))
    assert out["elbo_beats_per_step"].holds
    assert not out["estimator_matters_more_than_loss"].holds  # gains 0.03, 0.06 < gap 0.10
    assert "binomial SE" in out["elbo_beats_per_step"].detail  # one seed: the evaluation's SE


def test_reward_hacking_and_no_improvement(tmp_path):
    v = study({"epg_per_step": [0.30], "epg_elbo": [0.34], "ppo_clip_per_step": [0.31], "ppo_clip_elbo": [0.29]},
              fid_ratio=1.8)
    out = claims(v, cfg(tmp_path))
    assert not out["no_reward_hacking"].holds and out["no_reward_hacking"].value == pytest.approx(1.8)
    assert not out["improves_base"].holds  # 0.34 - 0.25 < 0.1
    assert not out["elbo_beats_per_step"].holds  # ppo_clip: elbo 0.29 < per_step 0.31


def test_missing_combinations_are_uncomputable(tmp_path):
    v = study({"epg_per_step": [0.30], "epg_elbo": [0.40]}, nfe_to_target=500.0)
    out = claims(v, cfg(tmp_path))
    assert out["elbo_beats_per_step"].value is None and not out["elbo_beats_per_step"].holds
    assert out["estimator_matters_more_than_loss"].value is None
    assert out["improves_base"].holds
    assert combination_table(v, cfg(tmp_path))[("epg", "elbo", "sde")]["nfe_to_target"] == [500.0]
