"""The estimators of the ``normconst_*`` experiments at equal oracle budgets
(docs/methods/normconst_rds.md): AIS on two paths (MALA by default, ULA the paper's variant) and
reverse diffusion with SNIS, SNIS + inner MALA, ULA-posterior or exact scores, each with about
``budget`` V / grad V calls per chain.

All chains of all repeats run as one tensor: ``repeats * chains`` rows; repeat r owns rows
[r * chains, (r + 1) * chains) and gives one log Z_hat_r (log-mean-exp of its weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.estimators.ais import GeometricPath, QuadraticTiltPath, annealed_importance_sampling
from core.estimators.densities import CountedTarget, GaussianMixture, Target
from core.estimators.logmeanexp import summarize_log_weights
from core.estimators.rds import (
    ExactMixtureScore,
    SNISMALAScore,
    SNISScore,
    ULAPosteriorScore,
    reverse_diffusion_log_z,
)

ESTIMATORS = ("ais_quadratic", "ais_geometric", "rds_snis", "rds_snis_mala", "rds_ula", "rds_oracle_score")


@dataclass
class EstimatorRun:
    """One estimator run: ``log_w`` (n,), final states ``x`` (n, d), oracle ``calls`` per chain actually
    spent, a ``setting`` string, and ``extra`` metrics (AIS acceptance and mode coverage; RDS K, M)."""

    log_w: torch.Tensor
    x: torch.Tensor
    calls: float
    setting: str
    extra: dict = field(default_factory=dict)


def rds_split(budget: int, opts: dict, inner_cost: int) -> tuple[int, int, int]:
    """(K steps, M proposals per step, J inner chains) for about ``budget`` oracle calls per chain:
    one V(y_K) at the end, K (M + J inner_cost) on the way (J = 0 when inner_cost = 0). ``rds_proposals``
    null: K = rds_steps and the per-step share C = (budget - 1) // K is split into J = max(1,
    floor(rds_inner_share C / inner_cost)) inner chains and M = C - J inner_cost proposals. M given: K
    = (budget - 1) // (M + J inner_cost) with J = max(1, floor(share / (1 - share) M / inner_cost))."""
    share = float(opts["rds_inner_share"])
    if inner_cost and not 0 < share < 1:
        raise ValueError(f"job.rds_inner_share must be in (0, 1), got {share}")
    m = opts["rds_proposals"]
    if m is None:
        k = int(opts["rds_steps"])
        per_step = (budget - 1) // k
        j = max(1, int(share * per_step / inner_cost)) if inner_cost else 0
        m = per_step - j * inner_cost
    else:
        m = int(m)
        j = max(1, int(share / (1 - share) * m / inner_cost)) if inner_cost else 0
        k = (budget - 1) // (m + j * inner_cost)
    if m < 1 or k < 1:
        raise ValueError(
            f"job.budgets: {budget} oracle calls per chain leave K={k} steps x M={m} proposals "
            f"(J={j} inner chains x {inner_cost} calls); raise the budget or lower job.rds_steps / rds_proposals"
        )
    return k, m, j


def _run_ais(name: str, counted: CountedTarget, budget: int, num_chains: int, gen, opts: dict) -> EstimatorRun:
    per_level = 1 if (name == "ais_quadratic" and opts["ais_transition"] == "ula") else 2
    levels = max(1, budget // per_level)
    if name == "ais_quadratic":
        path = QuadraticTiltPath(levels, opts["ais_lambda0"], opts["ais_quad_power"])
    else:
        path = GeometricPath(levels, opts["ais_ref_std"], opts["ais_ref_mean"], opts["ais_geo_power"])
    res = annealed_importance_sampling(
        counted,
        path,
        num_chains,
        opts["ais_step_size"],
        opts["ais_transition"],
        gen,
        max_step_ratio=opts["ais_max_step_ratio"],
    )
    extra = {"acceptance": res.acceptance}
    if res.coverage is not None and res.coverage.numel() > 1:
        extra["modes_covered"] = float((res.coverage > 0).sum())
        extra.update({f"mode_coverage_{k}": float(c) for k, c in enumerate(res.coverage)})
    setting = f"L={levels} {opts['ais_transition']}"
    return EstimatorRun(res.log_w, res.x, res.oracle_calls_per_chain, setting, extra)


def run_estimator(
    name: str, target: Target, budget: int, num_chains: int, gen: torch.Generator, opts: dict
) -> EstimatorRun:
    """Run estimator ``name`` with about ``budget`` oracle calls per chain on ``num_chains`` chains."""
    counted = CountedTarget(target)
    if name in ("ais_quadratic", "ais_geometric"):
        return _run_ais(name, counted, budget, num_chains, gen, opts)
    steps, extra = opts["rds_steps"], {}
    if name == "rds_snis":
        steps, m, _ = rds_split(budget, opts, 0)
        score, setting = SNISScore(counted, m, gen), f"K={steps} M={m}"
        extra = {"steps": steps, "proposals_per_step": m}
    elif name == "rds_snis_mala":
        s_in = int(opts["rds_inner_steps"])
        steps, m, j = rds_split(budget, opts, 1 + 2 * s_in)
        score = SNISMALAScore(
            counted, m, j, s_in, opts["rds_inner_step_size"], opts["rds_inner_step_ratio"], gen
        )
        setting = f"K={steps} M={m} J={j} S={s_in}"
        extra = {"steps": steps, "proposals_per_step": m, "inner_chains": j}
    elif name == "rds_ula":
        per_step = max(1, (budget - 1) // steps - opts["ula_importance"])
        m = max(1, per_step // opts["ula_steps"])
        score = ULAPosteriorScore(
            counted, m, opts["ula_steps"], opts["ula_step_size"], 0.2, opts["ula_importance"], gen
        )
        setting = f"K={steps} M={m} S={opts['ula_steps']}"
    elif name == "rds_oracle_score":
        if not isinstance(target, GaussianMixture):
            raise ValueError("rds_oracle_score needs a Gaussian-mixture target (closed-form noised score)")
        steps = max(1, min(budget - 1, opts["oracle_max_steps"]))
        score, setting = ExactMixtureScore(target, counted), f"K={steps} exact score (oracle reference)"
    else:
        raise ValueError(f"unknown estimator {name!r}; choose from {ESTIMATORS}")
    res = reverse_diffusion_log_z(
        counted,
        score,
        num_chains,
        opts["rds_T"],
        opts["rds_delta"],
        steps,
        opts["rds_grid"],
        opts["rds_weight"],
        gen,
    )
    if name == "rds_snis_mala":
        extra["inner_acceptance"] = score.acceptance
    return EstimatorRun(res.log_w, res.x, res.oracle_calls_per_chain, setting, extra)


def budget_sweep(
    target: Target,
    estimators: list[str],
    budgets: list[int],
    chains: int,
    repeats: int,
    seed: int,
    opts: dict,
) -> tuple[dict[str, float], dict]:
    """Every estimator at every budget; metrics ``test/<estimator>@<budget>/<name>`` and the raw
    per-run outputs (final states and log-weights) for figures."""
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ValueError(f"job.estimators: unknown {bad}; choose from {ESTIMATORS}")
    metrics, raw = {}, {}
    for i, est in enumerate(estimators):
        for j, budget in enumerate(budgets):
            gen = torch.Generator().manual_seed(seed * 100003 + i * 101 + j)
            run = run_estimator(est, target, int(budget), repeats * chains, gen, opts)
            log_w, x, calls, setting = run.log_w, run.x, run.calls, run.setting
            summary = summarize_log_weights(log_w.reshape(repeats, chains), target.log_z)
            key = f"test/{est}@{budget}"
            metrics.update(summary.as_metrics(key))
            metrics[f"{key}/oracle_calls_per_chain"] = calls
            metrics.update({f"{key}/{k}": float(v) for k, v in run.extra.items()})
            if isinstance(target, GaussianMixture) and target.num_components > 1:
                rec = target.recovered_mode_weights(x, log_w)
                metrics[f"{key}/weights_tv"] = 0.5 * float((rec - target.mode_weights).abs().sum())
                raw_share = target.recovered_mode_weights(x)
                metrics[f"{key}/unweighted_share_tv"] = 0.5 * float(
                    (raw_share - target.mode_weights).abs().sum()
                )
                for k in range(target.num_components):
                    metrics[f"{key}/weight_{k}"] = float(rec[k])
            raw[(est, budget)] = {
                "x": x,
                "log_w": log_w,
                "summary": summary,
                "setting": setting,
                "calls": calls,
            }
            print(
                f"[normconst] {est:17s} budget {budget:6d} ({setting}): calls/chain {calls:.0f}  "
                f"Z_hat/Z {summary.ratio_mean:.3f} +- {summary.ratio_std:.3f}  "
                f"|dlogZ| {summary.abs_log_error:.3f}"
            )
    return metrics, raw


def estimator_options(
    *,
    rds_steps: int = 50,
    rds_T: float = 5.0,
    rds_delta: float = 5e-3,
    rds_grid: str = "uniform",
    rds_weight: str = "paper",
    rds_proposals: int | None = None,
    rds_inner_steps: int = 4,
    rds_inner_share: float = 0.5,
    rds_inner_step_size: float = 0.2,
    rds_inner_step_ratio: float = 0.5,
    ula_steps: int = 4,
    ula_step_size: float = 0.01,
    ula_importance: int = 8,
    oracle_max_steps: int = 0,
    ais_transition: str = "mala",
    ais_step_size: float = 0.01,
    ais_max_step_ratio: float = 0.1,
    ais_lambda0: float = 100.0,
    ais_quad_power: float = 2.0,
    ais_ref_std: float = 5.0,
    ais_ref_mean: float = 0.0,
    ais_geo_power: float = 1.0,
) -> dict:
    """The estimators' settings with their defaults (an unknown keyword is an error)."""
    return dict(locals())


def sweep_job(
    output_dir: Path,
    seed: int,
    target: Target,
    estimators: list[str],
    budgets: list | None,
    chains: int,
    repeats: int,
    **options,
) -> tuple[dict[str, float], list[int]]:
    """The budget sweep of a ``job:`` on ``target`` with its two figures (error vs budget, samples at
    the largest budget) and the true log Z; ``options``: the estimators' settings
    (:func:`estimator_options`). Returns (metrics, budgets)."""
    from experiments.normconst_figures import plot_budget_curves, plot_samples

    opts = estimator_options(**options)
    budgets = [int(b) for b in (budgets or [400, 1600, 6400])]
    metrics, raw = budget_sweep(target, estimators, budgets, chains, repeats, seed, opts)
    output_dir = Path(output_dir)
    plot_budget_curves(raw, estimators, budgets, output_dir / "logz_error_vs_budget.png", target.name)
    plot_samples(raw, estimators, budgets[-1], target, output_dir / "samples_at_max_budget.png")
    metrics["test/true_log_z"] = target.log_z
    return metrics, budgets
