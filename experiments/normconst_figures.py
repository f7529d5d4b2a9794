"""Figures of the normalizing-constant experiments: log Z error and Z_hat / Z against the oracle
budget, the estimators' final samples, the oracle calls needed for a fixed error against d, and
``normconst_gmm_dims``'s error / ESS / mode-weight TV against d and budget (with its table)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from core.estimators.densities import Target  # noqa: E402


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


def plot_dims(curves, needed, dims, actions, eps, metrics, output_dir: Path) -> None:
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


_GMM_DIMS_PANELS = (
    ("abs_log_z_error", "mean |log Z_hat - log Z|", "log"),
    ("ess_fraction", "Kish ESS / chains", "log"),
    ("weights_tv", "mode-weight TV", "linear"),
)


def _gmm_dims_value(metrics: dict, d: int, budget: int, est: str, name: str) -> float:
    return metrics.get(f"test/d={d}/{est}@{budget}/{name}", float("nan"))


def _gmm_dims_grid(metrics, estimators, panels, xs, x_label, path: Path, per_column) -> None:
    """3 x len(panels) grid: rows the three measures, one column per entry of ``panels``; each line an
    estimator over ``xs``; ``per_column(col) -> (title, fn(x) -> (d, budget))``."""
    fig, axes = plt.subplots(3, len(panels), figsize=(4 * len(panels), 9), squeeze=False)
    for col, panel in enumerate(panels):
        title, key = per_column(panel)
        for row, (name, label, yscale) in enumerate(_GMM_DIMS_PANELS):
            ax = axes[row, col]
            for est in estimators:
                ax.plot(xs, [_gmm_dims_value(metrics, *key(x), est, name) for x in xs], "o-", label=est)
            ax.set(xscale="log", yscale=yscale, xlabel=x_label, ylabel=label, title=title)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[0, col].axhline(0.3, color="k", ls="--", lw=0.8)  # the claim's thresholds
        axes[2, col].axhline(0.1, color="k", ls="--", lw=0.8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gmm_dims(
    metrics: dict, estimators: list[str], dims: list[int], budgets: list[int], output_dir: Path
) -> None:
    """``gmm_dims_vs_budget.png``: rows |log Z error|, ESS, mode-weight TV; one column per d; x the
    oracle calls per chain. ``gmm_dims_vs_dim.png``: the same three against d at each budget."""
    _gmm_dims_grid(
        metrics, estimators, dims, budgets, "oracle calls per chain", output_dir / "gmm_dims_vs_budget.png",
        lambda d: (f"d = {d}", lambda b: (d, b)),
    )
    _gmm_dims_grid(
        metrics, estimators, budgets, dims, "dimension d", output_dir / "gmm_dims_vs_dim.png",
        lambda b: (f"{b} calls per chain", lambda d: (d, b)),
    )


def write_gmm_dims_table(
    metrics: dict, estimators: list[str], dims: list[int], budgets: list[int], path: Path
) -> None:
    """Markdown table: one row per (d, budget, estimator)."""
    cols = ("oracle_calls_per_chain", "abs_log_z_error", "z_ratio_mean", "ess_fraction", "weights_tv")
    lines = [
        "| d | budget | estimator | calls/chain | mean abs dlogZ | Z_hat/Z | ESS/N | mode-weight TV | K | M |"
        " AIS modes covered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in dims:
        for b in budgets:
            for est in estimators:
                v = [_gmm_dims_value(metrics, d, b, est, c) for c in cols]
                extra = [
                    _gmm_dims_value(metrics, d, b, est, c) for c in ("steps", "proposals_per_step", "modes_covered")
                ]
                extra_s = ["" if x != x else f"{x:.0f}" for x in extra]  # nan -> empty
                lines.append(
                    f"| {d} | {b} | {est} | {v[0]:.0f} | {v[1]:.3f} | {v[2]:.3f} | {v[3]:.3f} | {v[4]:.3f} | "
                    + " | ".join(extra_s)
                    + " |"
                )
    path.write_text("\n".join(lines) + "\n")
