"""The estimators of ``normconst_gmm`` / ``normconst_funnel`` / ``normconst_gaussian_dims`` at equal
oracle budgets (docs/methods/normconst_rds.md): AIS on two paths and reverse diffusion with SNIS,
ULA-posterior or exact scores, each with about ``budget`` V / grad V calls per chain.

All chains of all repeats run as one tensor: ``repeats * chains`` rows; repeat r owns rows
[r * chains, (r + 1) * chains) and gives one log Z_hat_r (log-mean-exp of its weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.estimators.ais import GeometricPath, QuadraticTiltPath, annealed_importance_sampling
from core.estimators.densities import CountedTarget, GaussianMixture, Target
from core.estimators.logmeanexp import summarize_log_weights
from core.estimators.rds import ExactMixtureScore, SNISScore, ULAPosteriorScore, reverse_diffusion_log_z

ESTIMATORS = ("ais_quadratic", "ais_geometric", "rds_snis", "rds_ula", "rds_oracle_score")


def run_estimator(name: str, target: Target, budget: int, num_chains: int, gen: torch.Generator, opts: dict):
    """Run estimator ``name`` with about ``budget`` oracle calls per chain on ``num_chains`` chains.
    Returns (log_w (n,), x (n, d), oracle calls per chain actually spent, settings string)."""
    counted = CountedTarget(target)
    if name in ("ais_quadratic", "ais_geometric"):
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
        setting = f"L={levels} {opts['ais_transition']}"
        return res.log_w, res.x, res.oracle_calls_per_chain, setting
    steps = opts["rds_steps"]
    if name == "rds_snis":
        m = max(1, (budget - 1) // steps)
        score, setting = SNISScore(counted, m, gen), f"K={steps} M={m}"
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
    return res.log_w, res.x, res.oracle_calls_per_chain, setting


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
            log_w, x, calls, setting = run_estimator(est, target, int(budget), repeats * chains, gen, opts)
            summary = summarize_log_weights(log_w.reshape(repeats, chains), target.log_z)
            key = f"test/{est}@{budget}"
            metrics.update(summary.as_metrics(key))
            metrics[f"{key}/oracle_calls_per_chain"] = calls
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


def sweep_job(
    output_dir: Path,
    seed: int,
    target: Target,
    estimators: list[str],
    budgets: list | None,
    chains: int,
    repeats: int,
    *,
    rds_steps: int = 50,
    rds_T: float = 5.0,
    rds_delta: float = 5e-3,
    rds_grid: str = "uniform",
    rds_weight: str = "paper",
    ula_steps: int = 4,
    ula_step_size: float = 0.01,
    ula_importance: int = 8,
    oracle_max_steps: int = 0,
    ais_transition: str = "ula",
    ais_step_size: float = 0.01,
    ais_max_step_ratio: float = 0.1,
    ais_lambda0: float = 100.0,
    ais_quad_power: float = 2.0,
    ais_ref_std: float = 5.0,
    ais_ref_mean: float = 0.0,
    ais_geo_power: float = 1.0,
) -> tuple[dict[str, float], list[int]]:
    """The budget sweep of a ``job:`` on ``target`` with its two figures (error vs budget, samples at
    the largest budget) and the true log Z; the keyword options are the estimators' settings (an
    unknown one is an error). Returns (metrics, budgets)."""
    from experiments.normconst_figures import plot_budget_curves, plot_samples

    opts = {k: v for k, v in locals().items() if k.startswith(("rds_", "ula_", "ais_", "oracle_"))}
    budgets = [int(b) for b in (budgets or [400, 1600, 6400])]
    metrics, raw = budget_sweep(target, estimators, budgets, chains, repeats, seed, opts)
    output_dir = Path(output_dir)
    plot_budget_curves(raw, estimators, budgets, output_dir / "logz_error_vs_budget.png", target.name)
    plot_samples(raw, estimators, budgets[-1], target, output_dir / "samples_at_max_budget.png")
    metrics["test/true_log_z"] = target.log_z
    return metrics, budgets
