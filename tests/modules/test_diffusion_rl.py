"""DiffusionRL (modules/diffusion_rl.py) and its reward-hacking watch (callbacks/rl_watch.py):
identical policies give a zero log-ratio and a finite loss for every objective x likelihood, one
step's NFE equals the hand count, bad design combinations fail before anything is loaded, and the
FID early-stop rule fires on a synthetic series."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from callbacks.rl_watch import RLWatchCallback, fid_drift_exceeded, nfe_to_target
from modules.diffusion_rl import DiffusionRL, Recorder, Replay, check_design, velocity_kl
from modules.t2i import DEFAULT_TEXT_ENCODER, DEFAULT_UNET, TextToImage


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> str:
    """A tiny t2i_shapes-like checkpoint (hyper_parameters + state_dict, as Lightning writes them)."""
    torch.manual_seed(0)
    hp = dict(image_size=32, unet={**DEFAULT_UNET, "base": 8, "attn_levels": 1, "heads": 2},
              text_encoder={**DEFAULT_TEXT_ENCODER, "dim": 16, "depth": 1, "heads": 2})
    base = TextToImage(**hp)
    with torch.no_grad():  # the EMA weights start the policy; make them differ from a fresh init
        for p in base.ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("base") / "last.ckpt"
    torch.save({"hyper_parameters": dict(base.hparams), "state_dict": base.state_dict()}, path)
    return str(path)


@pytest.fixture(autouse=True)
def spread_rewards(monkeypatch):
    """Rewards 0, 1/N, 2/N, ... instead of the evaluator's (a tiny untrained base scores 0 everywhere,
    which gives zero advantages and no update to test)."""
    import modules.diffusion_rl as rl

    def fake_evaluate(images, metas, strict=False):
        return SimpleNamespace(reward=torch.arange(len(metas), dtype=torch.float32).flip(0) / len(metas))

    monkeypatch.setattr(rl, "evaluate", fake_evaluate)


def make(base_ckpt: str, **kw) -> DiffusionRL:
    args = dict(base_ckpt=base_ckpt, prompts_per_step=2, group_size=2, rollout_steps=2, elbo_mc=2,
                micro_batch=4, prompt_pool=16, lr=1e-3)
    module = DiffusionRL(**(args | kw))
    opt = module.configure_optimizers()
    # one RL step without a Trainer: Lightning's manual-optimisation hooks reduce to these
    module.optimizers = lambda: opt
    module.manual_backward = lambda loss: loss.backward()
    return module


DESIGNS = [("epg", "per_step", "sde"), ("epg", "elbo", "sde"), ("ppo_clip", "per_step", "sde"),
           ("ppo_clip", "elbo", "sde"), ("epg", "elbo", "ode"), ("nft", "none", "sde")]


@pytest.mark.parametrize("objective,likelihood,sampler", DESIGNS)
def test_identical_policy_gives_zero_logratio_and_finite_loss(base_ckpt, objective, likelihood, sampler):
    module = make(base_ckpt, objective=objective, likelihood=likelihood, sampler=sampler, kl_coef=0.1)
    before = [p.detach().clone() for p in module.policy.parameters()]
    stats = module.rl_update()
    assert math.isfinite(stats["loss"]) and math.isfinite(stats["kl"])
    if objective != "nft":  # old = fresh copy of the policy and shared noise: log rho = 0 exactly
        assert stats["abs_logratio"] == pytest.approx(0.0, abs=1e-6)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy still equals the reference
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(module.policy.parameters(), before))
    assert moved > 0


@pytest.mark.parametrize("likelihood", ["per_step", "elbo"])
def test_second_inner_update_sees_a_nonzero_logratio(base_ckpt, likelihood):
    first = make(base_ckpt, likelihood=likelihood, inner_updates=1).rl_update()
    both = make(base_ckpt, likelihood=likelihood, inner_updates=2).rl_update()
    assert first["abs_logratio"] < 1e-6 and both["abs_logratio"] > 1e-6


def hand_count(objective, likelihood, n, k, mc, updates, cfg, kl) -> int:
    c = 2 if cfg else 1
    ref = 1 if kl else 0
    rollout = k * n * c
    if objective == "nft":
        return rollout + updates * (2 + ref) * mc * n * c
    if likelihood == "per_step":  # old log-probs come from the rollout itself
        return rollout + updates * (1 + ref) * k * n * c
    return rollout + mc * n * c + updates * (1 + ref) * mc * n * c


@pytest.mark.parametrize("objective,likelihood,sampler,cfg,kl,updates", [
    d + o for d, o in zip(DESIGNS, [(True, False, 1), (True, True, 2), (False, True, 2), (False, False, 1),
                                   (True, True, 1), (False, True, 2)])])
def test_nfe_of_one_step_matches_hand_count(base_ckpt, objective, likelihood, sampler, cfg, kl, updates):
    module = make(base_ckpt, objective=objective, likelihood=likelihood, sampler=sampler, cfg_rollouts=cfg,
                  kl_coef=0.1 if kl else 0.0, inner_updates=updates)
    module.charging = True
    module.rl_update()
    n, k, mc = 2 * 2, 2, 2
    assert module.nfe.items == hand_count(objective, likelihood, n, k, mc, updates, cfg, kl)
    module.charging = False  # evaluation is not charged
    module.generate(["a red circle"], generator=torch.Generator().manual_seed(0))
    assert module.nfe.items == hand_count(objective, likelihood, n, k, mc, updates, cfg, kl)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(likelihood="per_step", sampler="ode"), "module.sampler"),
    (dict(objective="nft", likelihood="elbo"), "module.likelihood=none"),
    (dict(objective="epg", likelihood="none"), "module.likelihood"),
    (dict(objective="grpo"), "module.objective"),
    (dict(old_policy="swa"), "module.old_policy"),
    (dict(elbo_weighting="snr"), "module.elbo_weighting"),
    (dict(group_size=1), "module.group_size"),
    (dict(elbo_mc=0), "module.elbo_mc"),
])
def test_bad_design_fails_before_loading_the_base(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        DiffusionRL(base_ckpt="/nonexistent/last.ckpt", **kwargs)


def test_missing_checkpoint_names_the_key():
    with pytest.raises(FileNotFoundError, match="module.base_ckpt"):
        DiffusionRL(base_ckpt="/nonexistent/last.ckpt")


def test_check_design_accepts_the_study_combinations():
    for objective, likelihood, sampler in DESIGNS:
        check_design(objective, likelihood, sampler, "copy", "uniform")


def test_training_prompts_avoid_the_eval_set(base_ckpt):
    from core.tasks.shapes import load_eval_prompts

    module = make(base_ckpt, prompt_pool=200)
    evals = {p["prompt"] for p in load_eval_prompts()}
    assert not evals & {p["prompt"] for p in module.pool}
    assert not any(p["heldout"] for p in module.pool)


def test_replay_returns_recorded_outputs_and_refuses_new_inputs():
    net = lambda x, t: 2 * x + t.view(-1, 1)  # noqa: E731
    rec = Recorder(net)
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    v = rec(x, t)
    assert torch.equal(Replay(rec.records)(x, t), v)
    with pytest.raises(ValueError):
        Replay(rec.records)(x + 1, t)
    with pytest.raises(KeyError):
        Replay(rec.records)(x, torch.full((3,), 0.25))
    # 0.5 |v - v_ref|^2 summed over dims, mean over rows: v_ref = v - 1 gives 0.5 * 2 = 1
    assert float(velocity_kl(rec.records, lambda x, t: net(x, t) - 1)) == pytest.approx(1.0)


def test_fid_early_stop_rule_on_a_synthetic_series():
    base, series = 10.0, [10.0, 11.0, 14.0, 19.9, 20.1, 30.0]
    fired = [fid_drift_exceeded(f, base, 2.0) for f in series]
    assert fired == [False, False, False, False, True, True]
    assert not any(fid_drift_exceeded(f, base, 0.0) for f in series)  # factor 0 disables it
    assert not fid_drift_exceeded(float("nan"), base, 2.0)


def test_watch_callback_stops_training_when_fid_drifts():
    cb = RLWatchCallback(every_n_steps=1, fid_factor=1.5)
    series = iter([12.0, 14.0, 19.0])
    module = SimpleNamespace(rl_step=0)

    def fake_watch(trainer, pl_module):
        fid = next(series)
        row = {"step": pl_module.rl_step, "nfe": 100.0 * pl_module.rl_step, "geneval": 0.2, "geneval_se": 0.0,
               "reward": 0.0, "fid": fid, "fid_ratio": fid / 12.0, "wall_s": 0.0}
        cb.rows.append(row)
        return row

    cb.watch = fake_watch
    logged = []  # what the trainer's loggers receive: (step, metrics)
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    trainer = SimpleNamespace(should_stop=False, max_steps=-1, global_step=0, callback_metrics={}, loggers=[logger],
                              callbacks=[], is_global_zero=True)
    cb.watch(trainer, module)  # step 0: the base model
    for step in (1, 2):
        module.rl_step = trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, step)
        assert trainer.should_stop == (step == 2)  # 14 < 1.5 x 12 = 18 < 19
    assert cb.stopped_step == 2 and float(trainer.callback_metrics["watch/fid_ratio"]) == pytest.approx(19 / 12)
    # each watch logged once, at its own step
    assert [(s, m["watch/fid_ratio"]) for s, m in logged] == [(1, pytest.approx(14 / 12)), (2, pytest.approx(19 / 12))]


def test_nfe_to_target():
    rows = [{"nfe": 0.0, "geneval": 0.3}, {"nfe": 500.0, "geneval": 0.45}, {"nfe": 900.0, "geneval": 0.52}]
    assert nfe_to_target(rows, 0.3, 0.2) == 900.0
    assert math.isnan(nfe_to_target(rows, 0.3, 0.3))
