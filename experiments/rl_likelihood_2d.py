"""``rl_likelihood_2d``: per-step vs ELBO log-ratio estimates vs the exact one (issue 11; docs/methods/rl_elbo.md).

A ``job:`` experiment. A small rectified-flow velocity MLP is trained on a 2-D dataset (the OLD
policy); the NEW policy is that model after a few steps of reward-weighted flow matching toward a
reward (RWR: old-policy samples weighted by exp(r / tau), r(x) = -|x - target|^2), a real policy
update that favours neither estimator. On samples x0 of SDE rollouts of the old policy, for each
budget K (rollout / MC steps):

* ``per_step``: sum_k log N(x_{k+1}; mu_new) - log N(x_{k+1}; mu_old) over the K SDE transitions
  (FlowGRPO); 2K network calls per sample (new + old), on top of the K of the rollout;
* ``elbo`` estimators: elbo_new(x0) - elbo_old(x0) with K shared (t, eps) draws; 2K calls per sample
  (the same as per_step); names ``<weighting>[_stratified]`` (weighting "elbo" = the continuous-time
  ELBO weight 2(1-t)/t, "uniform" = the flow-matching loss; stratified t draws optional).

The reference is the exact log-ratio log p_new(x0) - log p_old(x0) of the models' probability-flow
ODEs: log p(x0) = log N(x(1); 0, I) + int_0^1 div v(x(t), t) dt with the exact 2-D divergence
(autograd trace), RK4 in float64; its discretisation error is measured by halving the step count.
Metrics per (estimator, K): bias, variance and RMSE of (estimate - exact), correlation, NFE.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from core.utils.nfe import EvalCounter  # noqa: E402
from core.diffusion.flow import flow_sample  # noqa: E402
from core.diffusion.losses import denoising_error  # noqa: E402
from core.diffusion.processes import LinearPath  # noqa: E402
from core.diffusion.solvers import time_grid  # noqa: E402
from core.rl.objectives import elbo, elbo_draws, per_step_logprob  # noqa: E402
from datamodules.toy2d import sample_toy2d  # noqa: E402
from modules.nets.mlp import TimeMLP  # noqa: E402
from suite.results import Claim, VariantResult  # noqa: E402

PATH = LinearPath(t_min=0.0)  # x_t = (1 - t) x0 + t eps: the flow-matching path of the 2-D policies


def train_flow(
    data: Tensor, hidden: int, depth: int, steps: int, batch: int, lr: float, gen: torch.Generator
) -> nn.Module:
    """Flow matching: min E |v(x_t, t) - (eps - x0)|^2, x_t = (1-t) x0 + t eps, t ~ U(0, 1)."""
    model = TimeMLP(2, hidden=hidden, depth=depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (batch,), generator=gen)]
        _flow_matching_step(model, opt, x0, torch.ones(batch), gen)
        sched.step()
    return model


def _flow_matching_step(model, opt, x0: Tensor, weights: Tensor, gen: torch.Generator) -> None:
    t = torch.rand(len(x0), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    err = denoising_error(model, PATH, x0, t, eps, target="velocity")  # v(x_t, t) - (eps - x0)
    loss = (weights * (err**2).sum(1)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def finetune_rwr(old: nn.Module, steps: int, batch: int, lr: float, target: list, temperature: float,
                 sample_steps: int, gen: torch.Generator) -> nn.Module:
    """NEW policy: ``steps`` of reward-weighted flow matching on fresh old-policy samples.

    Weights exp(r/tau) normalised to mean 1 per batch, r(x) = -|x - target|^2 (pulls mass toward target).
    """
    new = copy.deepcopy(old)
    opt = torch.optim.Adam(new.parameters(), lr=lr)
    goal = torch.as_tensor(target, dtype=torch.float32)
    for _ in range(steps):
        with torch.no_grad():
            x0 = flow_sample(torch.randn(batch, 2, generator=gen), time_grid(1.0, 0.0, sample_steps), velocity=new).x
            logw = -((x0 - goal) ** 2).sum(1) / temperature
            w = torch.softmax(logw, 0) * batch
        _flow_matching_step(new, opt, x0, w, gen)
    return new


def exact_log_likelihood(velocity: nn.Module, x0: Tensor, steps: int, grid_power: float = 2.0) -> Tensor:
    """(N,) log p(x0) of the probability-flow ODE model dx/dt = v(x, t), prior N(0, I) at t = 1.

    d/dt [x, log p_t(x_t)] = [v, -div v]  =>  log p_0(x0) = log N(x_1; 0, I) + int_0^1 div v dt,
    integrated by RK4 on the grid t_k = (k / steps)^grid_power (denser near the data, where the
    learned density is sharp); the divergence is the exact trace (one autograd pass per dim).
    """

    def f(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = velocity(x, torch.full((x.shape[0],), t, dtype=x.dtype))
            div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=i < x.shape[1] - 1)[0][:, i]
                      for i in range(x.shape[1]))
        return v.detach(), div.detach()

    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64) ** grid_power
    x, acc = x0.clone(), torch.zeros(x0.shape[0], dtype=x0.dtype)
    for k in range(steps):
        t, h = float(grid[k]), float(grid[k + 1] - grid[k])
        v1, d1 = f(x, t)
        v2, d2 = f(x + 0.5 * h * v1, t + 0.5 * h)
        v3, d3 = f(x + 0.5 * h * v2, t + 0.5 * h)
        v4, d4 = f(x + h * v3, t + h)
        x = x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        acc = acc + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    prior = -0.5 * (x**2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
    return prior + acc


def error_stats(est: Tensor, exact: Tensor) -> dict[str, float]:
    """Bias, variance, RMSE of est - exact (N,), and their Pearson correlation."""
    err = est - exact
    corr = torch.corrcoef(torch.stack([est, exact]))[0, 1]
    return {"bias": float(err.mean()), "var_err": float(err.var()), "rmse": float(err.pow(2).mean().sqrt()),
            "corr": float(corr) if torch.isfinite(corr) else 0.0}


ELBO_OPTIONS = {"weighting": "elbo", "proposal": "uniform", "stratified": False, "antithetic": False}


def bootstrap_variances(err_a: Tensor, err_b: Tensor, gen: torch.Generator, n_boot: int = 2000,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Paired bootstrap (resampling the N samples) of Var(err_a) vs Var(err_b), errs (N,): returns the
    percentile interval (lo, hi) of the ratio Var(a)/Var(b) and the standard error of Var(a) - Var(b)."""
    idx = torch.randint(len(err_a), (n_boot, len(err_a)), generator=gen)
    var_a, var_b = err_a[idx].var(dim=1), err_b[idx].var(dim=1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=var_a.dtype)
    lo, hi = torch.quantile(var_a / var_b, q)
    return float(lo), float(hi), float((var_a - var_b).std())


def _parse_estimators(specs: dict) -> dict[str, dict]:
    """job.elbo_estimators: {name: {weighting, proposal, stratified, antithetic}} (missing keys: ELBO_OPTIONS)."""
    out = {}
    for name, spec in specs.items():
        spec = dict(spec or {})
        unknown = set(spec) - set(ELBO_OPTIONS)
        if unknown or name == "per_step":
            raise ValueError(f"job.elbo_estimators.{name}: unknown keys {sorted(unknown)} or reserved name; "
                             f"expected a subset of {sorted(ELBO_OPTIONS)}")
        out[name] = {**ELBO_OPTIONS, **spec}
    return out


def run_job(output_dir: Path, seed: int, dataset: str = "moons", hidden: int = 128, depth: int = 3,
            train_steps: int = 2000, train_batch: int = 256, lr: float = 2e-3, finetune_steps: int = 60,
            finetune_batch: int = 512, finetune_lr: float = 1e-3, reward_target: list | None = None,
            reward_temperature: float = 1.0, finetune_sample_steps: int = 20, n_samples: int = 512,
            budgets: list | None = None, noise_level: float = 0.7, t_range: list | None = None,
            elbo_estimators: dict | None = None, exact_steps: int = 100, exact_grid_power: float = 2.0,
            claim_budget: int | None = None, claim_estimator: str = "elbo") -> dict[str, float]:
    """Train old, fine-tune new, compare the log-ratio estimators with the exact log-ratio per budget."""
    gen = torch.Generator().manual_seed(seed)
    budgets = [int(b) for b in (budgets or [10])]
    parsed = _parse_estimators(elbo_estimators or {"elbo": {}})
    if claim_estimator not in parsed:
        raise ValueError(f"job.claim_estimator={claim_estimator!r} must be one of job.elbo_estimators {list(parsed)}")
    t_range = tuple(float(v) for v in (t_range or [0.02, 0.98]))
    data = sample_toy2d(dataset, 20000, gen)
    torch.manual_seed(seed)  # the MLP's initialisation
    print(f"[rl_likelihood_2d] seed {seed}: training the old flow ({train_steps} steps), then fine-tuning", flush=True)
    old = train_flow(data, hidden, depth, train_steps, train_batch, lr, gen)
    new = finetune_rwr(old, finetune_steps, finetune_batch, finetune_lr, reward_target or [1.0, 0.0],
                       reward_temperature, finetune_sample_steps, gen)
    old, new = old.double().eval(), new.double().eval()
    for p in [*old.parameters(), *new.parameters()]:
        p.requires_grad_(False)

    metrics: dict[str, float] = {"test/n_samples": n_samples, "test/exact_steps": exact_steps}
    raw: dict[int, dict[str, Tensor]] = {}
    for k_steps in budgets:
        print(f"[rl_likelihood_2d] seed {seed}: K = {k_steps} (budgets {budgets}): exact and estimated log-ratios",
              flush=True)
        counter = EvalCounter()
        x1 = torch.randn(n_samples, 2, generator=gen, dtype=torch.float64)
        traj = flow_sample(x1, time_grid(1.0, 0.0, k_steps).double(), velocity=old, solver="sde", sde_noise="flowgrpo",
                           noise_level=noise_level, generator=gen, counter=counter, return_trajectory=True)
        metrics[f"test/rollout@K{k_steps}/nfe_per_sample"] = counter.items / n_samples
        x0 = traj.x
        exact = exact_log_likelihood(new, x0, exact_steps, exact_grid_power) - exact_log_likelihood(
            old, x0, exact_steps, exact_grid_power)
        half = max(1, exact_steps // 2)
        coarse = exact_log_likelihood(new, x0, half, exact_grid_power) - exact_log_likelihood(
            old, x0, half, exact_grid_power)
        metrics[f"test/exact@K{k_steps}/solver_err_max"] = float((exact - coarse).abs().max())
        metrics[f"test/exact@K{k_steps}/std"] = float(exact.std())
        ests: dict[str, Tensor] = {}
        counter.reset()
        ests["per_step"] = per_step_logprob(traj, new, noise_level, counter=counter) - per_step_logprob(
            traj, old, noise_level, counter=counter)
        nfe = {"per_step": counter.items / n_samples}
        for name, spec in parsed.items():
            counter.reset()
            t, eps = elbo_draws(n_samples, (2,), k_steps, gen, t_range, stratified=spec["stratified"],
                                proposal=spec["proposal"], antithetic=spec["antithetic"])
            t, eps = t.double(), eps.double()
            kw = {"t_range": t_range, "proposal": spec["proposal"]}
            ests[name] = elbo(new, x0, t, eps, spec["weighting"], counter, **kw) - elbo(
                old, x0, t, eps, spec["weighting"], counter, **kw)
            nfe[name] = counter.items / n_samples
        for name, est in ests.items():
            for key, value in error_stats(est, exact).items():
                metrics[f"test/{name}@K{k_steps}/{key}"] = value
            metrics[f"test/{name}@K{k_steps}/nfe_per_sample"] = nfe[name]
        raw[k_steps] = {"exact": exact, **ests}
    main = int(claim_budget) if claim_budget is not None else budgets[len(budgets) // 2]
    if main not in raw:
        raise ValueError(f"job.claim_budget={main} must be one of job.budgets {budgets}")
    metrics["test/claim_budget"] = main
    metrics["test/claim_var_per_step"] = metrics[f"test/per_step@K{main}/var_err"]
    metrics["test/claim_var_elbo"] = metrics[f"test/{claim_estimator}@K{main}/var_err"]
    err_e, err_p = raw[main][claim_estimator] - raw[main]["exact"], raw[main]["per_step"] - raw[main]["exact"]
    lo, hi, diff_se = bootstrap_variances(err_e, err_p, gen)
    metrics.update({"test/claim_var_ratio": float(err_e.var() / err_p.var()), "test/claim_var_ratio_lo": lo,
                    "test/claim_var_ratio_hi": hi, "test/claim_var_diff_se": diff_se})
    on_log_scale = ["per_step"] + [n for n, spec in parsed.items() if spec["weighting"] == "elbo"]
    _plot(raw, main, budgets, on_log_scale, Path(output_dir))
    return metrics


def _plot(raw: dict[int, dict[str, Tensor]], main: int, budgets: list[int], on_log_scale: list[str],
          out: Path) -> None:
    """logratio_scatter.png (estimate vs exact at K=main) and error_vs_budget.png (error std of the
    estimators on the log p scale; correlation of all, the "uniform" weighting included, vs K)."""
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in raw[main] if n != "exact"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    exact = raw[main]["exact"].numpy()
    for ax, name in zip(axes[0], names):
        est = raw[main][name].numpy()
        ax.scatter(exact, est, s=4, alpha=0.5)
        lo, hi = float(min(exact.min(), est.min())), float(max(exact.max(), est.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(title=f"{name} (K={main})", xlabel="exact log p_new/p_old", ylabel="estimate")
    fig.tight_layout()
    fig.savefig(out / "logratio_scatter.png", dpi=110)
    plt.close(fig)
    fig, (ax, ax_c) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        if name in on_log_scale:
            ax.plot(budgets, [float((raw[k][name] - raw[k]["exact"]).std()) for k in budgets], "o-", label=name)
        corr = [float(torch.corrcoef(torch.stack([raw[k][name], raw[k]["exact"]]))[0, 1]) for k in budgets]
        ax_c.plot(budgets, corr, "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="K (SDE steps = MC draws; 2K calls per log-ratio)",
           ylabel="std of (estimate - exact)", title="error (log p-scale estimators)")
    ax_c.set(xscale="log", xlabel="K", ylabel="corr(estimate, exact)", title="correlation")
    ax.legend()
    ax_c.legend()
    fig.tight_layout()
    fig.savefig(out / "error_vs_budget.png", dpi=110)
    plt.close(fig)


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    """``elbo_lower_variance``: Var(elbo estimate - exact) < Var(per_step estimate - exact) at the claim budget,
    pooled over the study's seeds (mean of the per-seed error variances; each seed trains its own pair of
    models). Holds when the pooled difference is below 0 by more than 2 standard errors (paired bootstrap
    within each seed, combined over seeds): a tie within the noise does not count as lower."""
    named = {vname: v.metrics for vname, v in variants.items() if "test/claim_var_elbo" in v.metrics}
    if not named:
        return {"elbo_lower_variance": Claim.uncomputable("the job produced no estimator metrics")}
    runs = list(named.values())
    k, n = int(runs[0]["test/claim_budget"]), int(runs[0]["test/n_samples"])
    name = cfg.job.get("claim_estimator", "elbo")
    v_e = sum(m["test/claim_var_elbo"] for m in runs) / len(runs)
    v_p = sum(m["test/claim_var_per_step"] for m in runs) / len(runs)
    se = math.sqrt(sum(m.get("test/claim_var_diff_se", float("nan")) ** 2 for m in runs)) / len(runs)

    def one(vname: str, m: dict) -> str:
        lo, hi = m.get("test/claim_var_ratio_lo", float("nan")), m.get("test/claim_var_ratio_hi", float("nan"))
        return (f"{vname}: {m['test/claim_var_elbo']:.4g} vs {m['test/claim_var_per_step']:.4g} (ratio "
                f"{m['test/claim_var_elbo'] / m['test/claim_var_per_step']:.3f}, paired-bootstrap 95% CI "
                f"[{lo:.3f}, {hi:.3f}], bias {m[f'test/{name}@K{k}/bias']:.3g} vs {m[f'test/per_step@K{k}/bias']:.3g})")

    per_seed = "; ".join(one(vname, m) for vname, m in named.items())
    return {"elbo_lower_variance": Claim(
        bool(v_e - v_p + 2 * se < 0), v_e, v_p,
        f"variance over n={n} old-policy SDE samples of (estimate - exact log-ratio), exact by the probability-flow "
        f"ODE (RK4, exact divergence), at K={k}: {name} ({2 * k} calls, {k} shared (t, eps) draws) vs per_step "
        f"({2 * k} calls); mean over {len(runs)} seed(s) {v_e:.4g} vs {v_p:.4g}, difference {v_e - v_p:.4g} +- "
        f"{se:.3g} (s.e., paired bootstrap); holds when difference + 2 s.e. < 0; per seed {per_seed}")}
