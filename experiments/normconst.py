"""Normalizing-constant experiments (Guo, Tao, Chen 2025, arXiv 2502.04575): AIS vs reverse diffusion.

Three ``job:`` experiments here (``normconst_gmm_dims``: experiments.normconst_gmm_dims) (estimators train nothing):

* ``normconst_gmm`` (:func:`run_gmm`): the paper's 2-D four-mode mixture; every estimator at every
  oracle budget (V / grad V calls per chain), log Z error, Z_hat/Z mean and std over repeats, mode
  weights, AIS's mode coverage; claims ``rds_unbiased_multimodal``, ``rds_beats_ais_at_budget``
  (against MALA-AIS, the unbiased baseline), ``rds_recovers_weights``.
* ``normconst_gaussian_dims`` (:func:`run_gaussian_dims`):
  oracle calls for a fixed relative error vs d; figures and metrics only.
* ``normconst_funnel`` (:func:`run_funnel`): the funnel; figures and metrics only.

The estimators and the budget sweep: experiments.normconst_sweep; the figures:
experiments.normconst_figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from core.estimators.ais import QuadraticTiltPath
from core.estimators.densities import Funnel, four_mode_gmm
from core.estimators.logmeanexp import summarize_log_weights
from experiments.normconst_figures import plot_dims
from experiments.normconst_sweep import run_estimator, sweep_job
from suite.results import Claim, VariantResult


def run_gmm(
    output_dir: Path,
    seed: int,
    means: list | None = None,
    covs: list | None = None,
    weights: list | None = None,
    estimators: list | None = None,
    budgets: list | None = None,
    chains: int = 256,
    repeats: int = 16,
    oracle_max_steps: int = 400,
    ais_transition: str = "mala",
    ais_ref_std: float = 5.0,
    **options,
) -> dict[str, float]:
    """Budget sweep on the four-mode GMM (or any mixture given by means / covs / weights); ``options``:
    the other estimator settings of :func:`experiments.normconst_sweep.sweep_job`."""
    target = four_mode_gmm(means, covs, weights)
    estimators = list(
        estimators or ["ais_quadratic", "ais_geometric", "rds_snis", "rds_ula", "rds_oracle_score"]
    )
    metrics, budgets = sweep_job(
        output_dir, seed, target, estimators, budgets, chains, repeats, oracle_max_steps=oracle_max_steps,
        ais_transition=ais_transition, ais_ref_std=ais_ref_std, **options,
    )
    metrics["test/max_budget"] = budgets[-1]
    metrics["test/repeats"] = repeats
    metrics["test/chains"] = chains
    return metrics


def run_funnel(
    output_dir: Path,
    seed: int,
    dim: int = 10,
    scale: float = 3.0,
    estimators: list | None = None,
    budgets: list | None = None,
    chains: int = 128,
    repeats: int = 16,
    ais_transition: str = "mala",
    ais_ref_std: float = 3.0,
    **options,
) -> dict[str, float]:
    """Budget sweep on Neal's funnel (log Z = 0); figures (error vs budget, (x_0, x_1) samples);
    ``options``: the other estimator settings of :func:`experiments.normconst_sweep.sweep_job`."""
    estimators = list(estimators or ["ais_quadratic", "ais_geometric", "rds_snis"])
    return sweep_job(
        output_dir, seed, Funnel(dim, scale), estimators, budgets, chains, repeats,
        ais_transition=ais_transition, ais_ref_std=ais_ref_std, **options,
    )[0]


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    """The three claims of ``normconst_gmm``, from the sweep's largest budget (variant ``main``)."""
    m = next(iter(variants.values())).metrics
    budgets = [int(b) for b in (cfg.job.budgets or [])]
    b = budgets[-1] if budgets else int(m["test/max_budget"])
    n_rep, n_ch = int(cfg.job.repeats), int(cfg.job.chains)
    out = {}
    rds = f"test/rds_snis@{b}"
    if f"{rds}/z_ratio_mean" not in m:
        return {
            k: Claim.uncomputable("rds_snis did not run")
            for k in ("rds_unbiased_multimodal", "rds_beats_ais_at_budget", "rds_recovers_weights")
        }
    ratio, spread = m[f"{rds}/z_ratio_mean"], m.get(f"{rds}/z_ratio_std")
    base = (
        f"reverse diffusion with SNIS scores at {b} oracle calls per chain, {n_rep} repeats x {n_ch} chains"
    )
    if n_rep < 2 or spread is None:
        out["rds_unbiased_multimodal"] = Claim.uncomputable(base + "; one repeat gives no spread", 1.0)
    else:
        out["rds_unbiased_multimodal"] = Claim(
            abs(ratio - 1) < 0.1,
            ratio,
            1.0,
            f"{base}: mean over repeats of Z_hat/Z = {ratio:.3f}, std {spread:.3f} (95% CI of the mean "
            f"+-{1.96 * spread / math.sqrt(n_rep):.3f}); holds when within 10% of 1",
        )
    err_rds = m[f"{rds}/abs_log_z_error"]
    ais = {p: m.get(f"test/ais_{p}@{b}/abs_log_z_error") for p in ("quadratic", "geometric")}
    transition = cfg.job.get("ais_transition", "mala")
    if transition != "mala":
        out["rds_beats_ais_at_budget"] = Claim.uncomputable(
            f"compared against MALA-AIS (unbiased); job.ais_transition={transition}", err_rds
        )
    elif any(v is None for v in ais.values()):
        out["rds_beats_ais_at_budget"] = Claim.uncomputable("AIS paths did not both run", err_rds)
    else:
        calls = {
            k: m.get(f"test/{k}@{b}/oracle_calls_per_chain")
            for k in ("rds_snis", "ais_quadratic", "ais_geometric")
        }
        out["rds_beats_ais_at_budget"] = Claim(
            err_rds < min(ais.values()),
            err_rds,
            min(ais.values()),
            f"mean over {n_rep} repeats of |log Z_hat - log Z| at ~{b} oracle calls per chain (measured: "
            + ", ".join(f"{k} {v:.0f}" for k, v in calls.items() if v is not None)
            + f"): RDS {err_rds:.3f}, AIS (MALA) quadratic-tilt from the origin {ais['quadratic']:.3f}, "
            f"AIS (MALA) geometric from N(0, {cfg.job.ais_ref_std}^2 I) {ais['geometric']:.3f}; "
            f"holds when RDS is below both. {_coverage_text(m, b)}",
        )
    tv = m[f"{rds}/weights_tv"]
    out["rds_recovers_weights"] = Claim(
        tv < 0.05,
        tv,
        0.05,
        f"total variation between the true mode weights and the importance-weighted share of RDS's final "
        f"samples per mode (nearest component by responsibility), pooled over {n_rep * n_ch} chains "
        f"at budget {b}",
    )
    return out


def _coverage_text(m: dict, b: int) -> str:
    """AIS's mode coverage at budget b (fraction of final chains nearest each mode), for a claim's detail."""
    parts = []
    for p in ("quadratic", "geometric"):
        prefix = f"test/ais_{p}@{b}/mode_coverage_"
        cov = [m[prefix + str(i)] for i in range(len(m)) if prefix + str(i) in m]
        if cov:
            parts.append(f"{p} [" + ", ".join(f"{c:.2f}" for c in cov) + "]")
    return ("AIS mode coverage (fraction of final chains nearest each mode): " + "; ".join(parts)) if parts else ""


def _first_crossing(calls: list[float], errors: list[float], eps: float) -> float | None:
    """Oracle calls where the error first falls to eps, interpolated log-log between the bracketing
    sweep points; None when the sweep never reaches eps."""
    for i, e in enumerate(errors):
        if e <= eps:
            if i == 0:
                return calls[0]
            c0, c1, e0, e1 = map(math.log, (calls[i - 1], calls[i], errors[i - 1], max(e, 1e-12)))
            return math.exp(c0 + (math.log(eps) - e0) * (c1 - c0) / (e1 - e0)) if e1 != e0 else calls[i]
    return None


def _slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    lx, ly = torch.tensor(xs, dtype=torch.float64).log(), torch.tensor(ys, dtype=torch.float64).log()
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


def run_gaussian_dims(
    output_dir: Path,
    seed: int,
    dims: list | None = None,
    mean: float = 1.0,
    variance: float = 1.0,
    rel_error: float = 0.2,
    chains: int = 32,
    repeats: int = 16,
    ais_levels: list | None = None,
    rds_steps: list | None = None,
    ais_transition: str = "mala",
    ais_step_size: float = 0.05,
    ais_max_step_ratio: float = 0.1,
    ais_lambda0: float = 100.0,
    ais_quad_power: float = 2.0,
    rds_T: float = 5.0,
    rds_delta: float = 5e-3,
    rds_weight: str = "exact",
) -> dict[str, float]:
    """Oracle calls for relative error ``rel_error`` (root-mean-square of log(Z_hat/Z) over repeats,
    each repeat ``chains`` chains) on N(mean 1, variance I_d), for AIS on the quadratic-tilt path and
    for reverse diffusion with EXACT scores (oracle reference, so that score error does not confound
    the d-scaling; each score evaluation counts as one oracle call). Fitted log-log exponents, and
    the exponent in d of the paper's bound d beta^2 A^2 / eps^4 with A the path's action."""
    from core.estimators.ais import gaussian_path_action
    from core.estimators.densities import gaussian

    dims = [int(d) for d in (dims or [2, 4, 8, 16, 32])]
    ais_levels = [int(v) for v in (ais_levels or [2**k for k in range(4, 15)])]
    rds_steps = [int(v) for v in (rds_steps or [2**k for k in range(2, 12)])]
    opts = {
        "ais_transition": ais_transition,
        "ais_step_size": ais_step_size,
        "ais_max_step_ratio": ais_max_step_ratio,
        "ais_lambda0": ais_lambda0,
        "ais_quad_power": ais_quad_power,
        "rds_T": rds_T,
        "rds_delta": rds_delta,
        "rds_grid": "uniform",
        "rds_weight": rds_weight,
    }
    per_level = 2 if ais_transition == "mala" else 1
    metrics: dict[str, float] = {}
    curves = {"ais": {}, "rds": {}}
    needed = {"ais": {}, "rds": {}}
    actions = {}
    for i, d in enumerate(dims):
        target = gaussian(d, mean=mean, variances=[variance] * d)
        actions[d] = gaussian_path_action(
            QuadraticTiltPath(2, ais_lambda0, ais_quad_power), target.means[0], torch.diagonal(target.covs[0])
        )
        metrics[f"test/d={d}/action_quadratic_path"] = actions[d]
        for kind, sweep in (("ais", ais_levels), ("rds", rds_steps)):
            calls, errors = [], []
            for j, size in enumerate(sweep):
                gen = torch.Generator().manual_seed(seed * 100003 + i * 1009 + j * 7 + (kind == "rds"))
                if kind == "ais":
                    run = run_estimator("ais_quadratic", target, size * per_level, repeats * chains, gen, opts)
                else:
                    run = run_estimator(
                        "rds_oracle_score",
                        target,
                        size + 1,
                        repeats * chains,
                        gen,
                        {**opts, "rds_steps": size, "oracle_max_steps": size},
                    )
                log_w, c = run.log_w, run.calls
                s = summarize_log_weights(log_w.reshape(repeats, chains), target.log_z)
                # RMS of log(Z_hat/Z): ~ relative error when small, not ruled by one heavy-tailed repeat
                err = float(((s.log_z_hat - target.log_z) ** 2).mean().sqrt())
                calls.append(c)
                errors.append(err)
                metrics[f"test/d={d}/{kind}@{size}/rel_error"] = err
                print(f"[normconst] d={d:3d} {kind} size {size:5d}: calls/chain {c:.0f} rel. error {err:.3f}")
                if err < rel_error / 2 and len(errors) >= 2:
                    break  # the crossing is bracketed; larger budgets cost time and add nothing
            curves[kind][d] = (calls, errors)
            hit = _first_crossing(calls, errors, rel_error)
            if hit is not None:
                needed[kind][d] = hit
                metrics[f"test/d={d}/{kind}_calls_for_eps"] = hit
    for kind in ("ais", "rds"):
        ds = sorted(needed[kind])
        slope = _slope(ds, [needed[kind][d] for d in ds])
        if slope is not None:
            metrics[f"test/{kind}_exponent_in_d"] = slope
    bound = [d * actions[d] ** 2 / variance**2 for d in dims]  # d beta^2 A^2 (eps fixed), beta = 1 / variance
    metrics["test/bound_exponent_in_d"] = _slope(dims, bound)
    plot_dims(curves, needed, dims, actions, rel_error, metrics, Path(output_dir))
    return metrics
