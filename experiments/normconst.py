"""Normalizing-constant experiments (Guo, Tao, Chen 2025, arXiv 2502.04575): AIS vs reverse diffusion.

Three ``job:`` experiments (estimators train nothing):

* ``normconst_gmm`` (:func:`run_gmm`): the paper's 2-D four-mode mixture; every estimator at every
  oracle budget (V / grad V calls per chain), log Z error, Z_hat/Z mean and std over repeats, mode
  weights; claims ``rds_unbiased_multimodal``, ``rds_beats_ais_at_budget``, ``rds_recovers_weights``.
* ``normconst_gaussian_dims`` (:func:`run_gaussian_dims`):
  oracle calls for a fixed relative error vs d; figures and metrics only.
* ``normconst_funnel`` (:func:`run_funnel`): the funnel; figures and metrics only.

All chains of all repeats run as one tensor: ``repeats * chains`` rows; repeat r owns rows
[r * chains, (r + 1) * chains) and gives one log Z_hat_r (log-mean-exp of its weights).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from core.estimators.ais import GeometricPath, QuadraticTiltPath, annealed_importance_sampling  # noqa: E402
from core.estimators.logmeanexp import summarize_log_weights  # noqa: E402
from core.estimators.rds import ExactMixtureScore, SNISScore, ULAPosteriorScore, reverse_diffusion_log_z  # noqa: E402
from core.estimators.densities import CountedTarget, Funnel, GaussianMixture, Target, four_mode_gmm  # noqa: E402
from suite.results import Claim, VariantResult  # noqa: E402

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


def plot_budget_curves(raw: dict, estimators: list[str], budgets: list[int], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for est in estimators:
        calls = [raw[(est, b)]["calls"] for b in budgets]
        err = [raw[(est, b)]["summary"].abs_log_error for b in budgets]
        mean_r = [raw[(est, b)]["summary"].ratio_mean for b in budgets]
        std_r = [raw[(est, b)]["summary"].ratio_std for b in budgets]
        axes[0].loglog(calls, err, "o-", label=est)
        axes[1].errorbar(calls, mean_r, yerr=std_r, fmt="o-", capsize=3, label=est)
    axes[0].set(xlabel="oracle calls per chain", ylabel="mean |log Z_hat - log Z| over repeats", title=title)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set(xscale="log", xlabel="oracle calls per chain", ylabel="Z_hat / Z (mean +- std over repeats)")
    axes[1].set_ylim(0, 2.5)
    for ax in axes:
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_samples(
    raw: dict,
    estimators: list[str],
    budget: int,
    target: Target,
    path: Path,
    dims: tuple[int, int] = (0, 1),
    n_show: int = 2000,
) -> None:
    panels = len(estimators) + (1 if target.has_sampler else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.2), squeeze=False)
    axes = axes[0]
    if target.has_sampler:
        ref = target.sample(n_show, torch.Generator().manual_seed(0))
        axes[0].scatter(ref[:, dims[0]], ref[:, dims[1]], s=2, alpha=0.4)
        axes[0].set_title("exact samples", fontsize=9)
    for ax, est in zip(axes[1:] if target.has_sampler else axes, estimators):
        x = raw[(est, budget)]["x"][:n_show]
        ax.scatter(x[:, dims[0]], x[:, dims[1]], s=2, alpha=0.4, color="C1")
        ax.set_title(f"{est}\n{raw[(est, budget)]['setting']}", fontsize=8)
    lims = [ax.get_xlim() for ax in axes[:1]] if target.has_sampler else None
    if lims:
        for ax in axes:
            ax.set_xlim(*axes[0].get_xlim())
            ax.set_ylim(*axes[0].get_ylim())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    rds_steps: int = 50,
    rds_T: float = 5.0,
    rds_delta: float = 5e-3,
    rds_grid: str = "uniform",
    rds_weight: str = "paper",
    ula_steps: int = 4,
    ula_step_size: float = 0.01,
    ula_importance: int = 8,
    oracle_max_steps: int = 400,
    ais_transition: str = "ula",
    ais_step_size: float = 0.01,
    ais_max_step_ratio: float = 0.1,
    ais_lambda0: float = 100.0,
    ais_quad_power: float = 2.0,
    ais_ref_std: float = 5.0,
    ais_ref_mean: float = 0.0,
    ais_geo_power: float = 1.0,
) -> dict[str, float]:
    """Budget sweep on the four-mode GMM (or any mixture given by means / covs / weights)."""
    target = four_mode_gmm(means, covs, weights)
    estimators = list(
        estimators or ["ais_quadratic", "ais_geometric", "rds_snis", "rds_ula", "rds_oracle_score"]
    )
    budgets = [int(b) for b in (budgets or [400, 1600, 6400])]
    opts = {k: v for k, v in locals().items() if k.startswith(("rds_", "ula_", "ais_", "oracle_"))}
    metrics = _sweep_with_figures(target, estimators, budgets, chains, repeats, seed, opts, output_dir)
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
    rds_steps: int = 50,
    rds_T: float = 5.0,
    rds_delta: float = 5e-3,
    rds_grid: str = "uniform",
    rds_weight: str = "paper",
    ula_steps: int = 4,
    ula_step_size: float = 0.01,
    ula_importance: int = 8,
    ais_transition: str = "mala",
    ais_step_size: float = 0.01,
    ais_max_step_ratio: float = 0.1,
    ais_lambda0: float = 100.0,
    ais_quad_power: float = 2.0,
    ais_ref_std: float = 3.0,
    ais_ref_mean: float = 0.0,
    ais_geo_power: float = 1.0,
) -> dict[str, float]:
    """Budget sweep on Neal's funnel (log Z = 0); figures (error vs budget, (x_0, x_1) samples)."""
    target = Funnel(dim, scale)
    estimators = list(estimators or ["ais_quadratic", "ais_geometric", "rds_snis"])
    budgets = [int(b) for b in (budgets or [400, 1600, 6400])]
    opts = {k: v for k, v in locals().items() if k.startswith(("rds_", "ula_", "ais_"))}
    opts["oracle_max_steps"] = 0
    return _sweep_with_figures(target, estimators, budgets, chains, repeats, seed, opts, output_dir)


def _sweep_with_figures(target, estimators, budgets, chains, repeats, seed, opts, output_dir) -> dict:
    """The budget sweep, its two figures (error vs budget, samples at the largest budget), true log Z."""
    metrics, raw = budget_sweep(target, estimators, budgets, chains, repeats, seed, opts)
    output_dir = Path(output_dir)
    plot_budget_curves(raw, estimators, budgets, output_dir / "logz_error_vs_budget.png", target.name)
    plot_samples(raw, estimators, budgets[-1], target, output_dir / "samples_at_max_budget.png")
    metrics["test/true_log_z"] = target.log_z
    return metrics


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
    if any(v is None for v in ais.values()):
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
            + f"): RDS {err_rds:.3f}, AIS quadratic-tilt from the origin {ais['quadratic']:.3f}, "
            f"AIS geometric from N(0, {cfg.job.ais_ref_std}^2 I) {ais['geometric']:.3f}; "
            "holds when RDS is below both",
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
                    log_w, _, c, _ = run_estimator(
                        "ais_quadratic", target, size * per_level, repeats * chains, gen, opts
                    )
                else:
                    log_w, _, c, _ = run_estimator(
                        "rds_oracle_score",
                        target,
                        size + 1,
                        repeats * chains,
                        gen,
                        {**opts, "rds_steps": size, "oracle_max_steps": size},
                    )
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
    _plot_dims(curves, needed, dims, actions, rel_error, metrics, Path(output_dir))
    return metrics


def _plot_dims(curves, needed, dims, actions, eps, metrics, output_dir: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, kind, label in (
        (axes[0], "ais", "AIS, quadratic-tilt path"),
        (axes[1], "rds", "RDS, exact scores (oracle)"),
    ):
        for d in dims:
            calls, errors = curves[kind][d]
            ax.loglog(calls, errors, "o-", ms=3, label=f"d={d}")
        ax.axhline(eps, color="k", ls="--", lw=0.8)
        ax.set(xlabel="oracle calls per chain", ylabel="RMS of log(Z_hat/Z) over repeats", title=label)
        ax.legend(fontsize=7)
    ax = axes[2]
    for kind, marker in (("ais", "o"), ("rds", "s")):
        ds = sorted(needed[kind])
        if ds:
            slope = metrics.get(f"test/{kind}_exponent_in_d")
            ax.loglog(
                ds,
                [needed[kind][d] for d in ds],
                marker + "-",
                label=f"{kind}: slope {slope:.2f}" if slope is not None else kind,
            )
    bound = [d * actions[d] ** 2 for d in dims]
    scale = (
        (needed["ais"][min(needed["ais"])] / bound[dims.index(min(needed["ais"]))]) if needed["ais"] else 1.0
    )
    ax.loglog(
        dims,
        [scale * b for b in bound],
        "k:",
        label=f"d A^2 (bound), slope {metrics['test/bound_exponent_in_d']:.2f}",
    )
    ax.set(
        xlabel="dimension d", ylabel=f"oracle calls per chain for rel. error {eps}", title="complexity vs d"
    )
    ax.legend(fontsize=8)
    for a in axes:
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(output_dir / "calls_for_fixed_error_vs_dim.png", dpi=120)
    plt.close(fig)
