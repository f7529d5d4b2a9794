"""``ridge_mixture``: random-feature scores on K modes; reach-align-slide and inter-mode generation.

One variant = one (width p, flow time tau) of the random-feature posterior-mean model of
core.ridge.score_models, trained in closed form (gradient flow A(tau) on Monte-Carlo feature moments) or
by SGD, then sampled by Euler-Maruyama on the reverse OU SDE over a geometric grid T -> t_min
(docs/methods/ridge_phases.md). Metrics (``test/...``): near-mode and inter-mode fractions of the final
samples, median normal offset from the ridge (SCMS projection) at the ridge time t_r (the smallest
time where the Hessian's relative eigengap at d* is >= min_eigengap at the modes; reported with that
gap), and the reach / align / slide times of core.ridge.phases on the drift part of each step.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import torch

from core.diffusion.processes import OU
from core.diffusion.solvers import euler_maruyama, reverse_sde, time_grid
from core.ridge.analysis import analyse_sampling, final_sample_metrics, ridge_time_by_eigengap
from core.ridge.figures import plot_ridge_2d, plot_series
from core.ridge.score_models import RandomFeatureScore, train_rf_sgd
from datamodules.ridge_mixture import RidgeMixtureDataModule
from suite.results import Claim, VariantResult

FITS = ("closed_form", "sgd")


def mode_fractions(
    x: torch.Tensor,
    modes: torch.Tensor,
    widths: torch.Tensor,
    spacing: float,
    near_radius: float,
    ridge_radius: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(near, inter) boolean (B,): near = within near_radius * spacing + 2 width of a mode; inter =
    not near, and within ridge_radius * spacing of the open segment between some pair of modes."""
    x, modes = x.double(), modes.double()
    near = (torch.cdist(x, modes) <= near_radius * spacing + 2 * widths.double()).any(1)
    on_segment = torch.zeros(len(x), dtype=torch.bool)
    for i, j in itertools.combinations(range(len(modes)), 2):
        d = modes[j] - modes[i]
        s = ((x - modes[i]) @ d) / (d @ d)
        foot = modes[i] + s.clamp(0, 1)[:, None] * d
        on_segment |= ((x - foot).norm(dim=1) <= ridge_radius * spacing) & (s > 0) & (s < 1)
    return near, (~near) & on_segment


def run_job(
    output_dir: Path,
    seed: int,
    width: int,
    tau: float,
    data: dict,
    T: float = 10.0,
    t_min: float = 1e-3,
    n_freq: int = 16,
    n_mc: int = 20000,
    time_sampling: str = "uniform",
    init_std: float = 0.0,
    fit: str = "closed_form",
    sgd_lr: float = 0.05,
    sgd_batch: int = 512,
    n_samples: int = 1000,
    sample_steps: int = 500,
    n_traj: int = 300,
    d_star: int = 1,
    min_eigengap: float = 1e-3,
    valid_eigengap: float = 1e-6,
    near_radius: float = 0.1,
    ridge_radius: float = 0.05,
    thresholds: dict | None = None,
    n_steps_analysed: int = 50,
) -> dict[str, float]:
    if fit not in FITS:
        raise ValueError(f"job.fit must be one of {FITS}, got {fit!r}")
    if thresholds is None or not {"reach", "align", "slide"} <= set(thresholds):
        raise ValueError(f"job.thresholds needs reach, align and slide, got {thresholds}")
    tau = float(tau)
    dm = RidgeMixtureDataModule(**data, seed=seed)
    train = dm.train_tensor().double()
    spacing = dm.mode_spacing
    process = OU(T=T, t_min=t_min)

    model = RandomFeatureScore(train.shape[1], width, process, n_freq, seed, init_std, time_sampling)
    gen = torch.Generator().manual_seed(seed + 1)
    batch = model.training_batch(train, n_mc, gen)
    if fit == "closed_form":
        # The moments depend on everything but tau: variants differing only in tau share them.
        key = json.dumps([width, seed, n_mc, data, T, t_min, n_freq, time_sampling, init_std], sort_keys=True)
        cache = Path(output_dir).parent / f"rf_moments_{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
        if cache.exists():
            U, V = torch.load(cache, weights_only=True)
        else:
            U, V = model.feature_moments(*batch)
            torch.save((U, V), cache)
        model.set_gradient_flow(U, V, tau)
    else:
        if math.isinf(tau):
            raise ValueError("job.fit=sgd needs a finite job.tau (SGD time = lr * steps)")
        train_rf_sgd(model, train, max(1, round(tau / sgd_lr)), sgd_lr, sgd_batch, gen)
    with torch.no_grad():
        train_loss = float(model.loss(*batch))

    # Euler-Maruyama on the reverse SDE, recording the drift part of every step.
    times = time_grid(T, t_min, sample_steps, "geometric").double()
    drift, diffusion = reverse_sde(process, lambda x, t: model(x, t))
    drifts = []

    def recorded(x, t):
        d = drift(x, t)
        drifts.append(d[:n_traj].clone())
        return d

    sgen = torch.Generator().manual_seed(seed + 2)
    x_T = process.prior_sample((n_samples, train.shape[1]), generator=sgen).double()
    with torch.no_grad():
        res = euler_maruyama(x_T, times, drift=recorded, diffusion=diffusion, generator=sgen, return_trajectory=True)
    traj = torch.stack([s[:n_traj] for s in res.trajectory])
    disp = torch.stack(drifts) * (times[1:] - times[:-1])[:, None, None]
    final = res.x / float(process.alpha(times[-1]))

    t_r, gap_train = ridge_time_by_eigengap(train, process, d_star, min_eigengap)
    stride = max(1, sample_steps // n_steps_analysed)
    series, phases, summary = analyse_sampling(
        traj, times, train, process, d_star, t_r, spacing, thresholds, stride, disp, valid_eigengap
    )
    fin = final_sample_metrics(final, train, process, d_star, t_r)
    near, inter = mode_fractions(final, dm.modes, dm.widths, spacing, near_radius, ridge_radius)

    out = Path(output_dir)
    near_f, inter_f = float(near.double().mean()), float(inter.double().mean())
    title = f"RF width {width}, tau {tau:g}: near {near_f:.2f}, inter {inter_f:.2f}"
    a = torch.tensor([float(process.alpha(t)) for t in times], dtype=torch.float64)
    k_r = int((times > t_r).sum())  # draw the trajectories from the ridge time on (data units)
    fig = plot_ridge_2d(
        traj[k_r:] / a[k_r:, None, None], train, process, t_r, d_star, final, title + f", t <= {t_r:.3g}"
    )
    fig.savefig(out / "trajectories.png")
    plot_series(series, phases, title).savefig(out / "series.png")
    import matplotlib.pyplot as plt

    plt.close("all")
    torch.save(
        {
            "times": series.times,
            "distance": series.distance,
            "normal_share": series.normal_share,
            "normal_offset": series.normal_offset,
            "eigengap": series.eigengap,
        },
        out / "series.pt",
    )

    metrics = {
        "test/near_mode_fraction": float(near.double().mean()),
        "test/inter_mode_fraction": float(inter.double().mean()),
        "test/normal_offset_median": float(fin["normal_offset"].median()),
        "test/normal_offset_rel": float(fin["normal_offset"].median()) / spacing,
        "test/normalized_normal_score": float(fin["normalized_normal_score"].median()),
        "test/ridge_time": t_r,
        "test/eigengap_train": gap_train,
        "test/eigengap_samples": float(fin["eigengap"].median()),
        "test/train_loss": train_loss,
        "test/n_samples": float(n_samples),
        "config/width": float(width),
        "config/tau": tau if math.isfinite(tau) else 0.0,
        "config/tau_is_inf": float(math.isinf(tau)),
    }
    metrics.update({f"test/{k}": v for k, v in summary.items()})
    return metrics


def _group(variants: dict[str, VariantResult], width: float, tau_inf: bool, tau: float | None = None):
    """All seeds of one (width, tau) cell."""
    out = []
    for v in variants.values():
        m = v.metrics
        if m.get("config/width") == width and bool(m.get("config/tau_is_inf")) == tau_inf:
            if tau is None or m.get("config/tau") == tau:
                out.append(v)
    return out


def _mean_se(group: list[VariantResult], key: str) -> tuple[float, float]:
    """Mean over seeds and its standard error (binomial SE of a fraction when there is one seed)."""
    vals = torch.tensor([v.metrics[key] for v in group], dtype=torch.float64)
    mean = float(vals.mean())
    if len(vals) > 1:
        return mean, float(vals.std() / math.sqrt(len(vals)))
    n = group[0].metrics["test/n_samples"]
    return mean, math.sqrt(max(mean * (1 - mean), 1e-12) / n)


def _compare(a_group, b_group, key: str) -> tuple[float, float, float, str]:
    (a, sa), (b, sb) = _mean_se(a_group, key), _mean_se(b_group, key)
    se = math.hypot(sa, sb)
    how = (
        f"mean over {len(a_group)} and {len(b_group)} seeds, SE from the seed spread"
        if min(len(a_group), len(b_group)) > 1
        else "one seed each, binomial SE"
    )
    return a, b, se, how


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    ms = [v.metrics for v in variants.values()]
    widths = sorted({m["config/width"] for m in ms})
    finite_taus = sorted({m["config/tau"] for m in ms if not m["config/tau_is_inf"]})
    out: dict[str, Claim] = {}
    big = _group(variants, widths[-1], True)
    if not big:
        out["aligns_then_slides"] = Claim.uncomputable("needs the variant at the largest width with tau = inf")
    else:
        per_seed = []
        for v in big:
            m = v.metrics
            per_seed.append(
                f"{v.name}: reach t={m.get('test/t_reach')}, align t={m.get('test/t_align')} (ends "
                f"{m.get('test/t_align_end')}), slide t={m.get('test/t_slide')}, offset/spacing "
                f"{m['test/normal_offset_rel']:.4g}, last-20% tangent {m['test/last20_tangent_share']:.3f} "
                "vs "
                f"normal {m['test/last20_normal_share']:.3f}"
            )
        ordered = all(bool(v.metrics["test/phases_ordered"]) for v in big)
        offset = sum(v.metrics["test/normal_offset_rel"] for v in big) / len(big)
        slide_ok = all(v.metrics["test/last20_tangent_share"] > v.metrics["test/last20_normal_share"] for v in big)
        m0 = big[0].metrics
        out["aligns_then_slides"] = Claim(
            ordered and offset < 0.05 and slide_ok,
            offset,
            0.05,
            f"width {int(widths[-1])}, tau = inf, every seed: phases ordered reach <= align < slide: "
            f"{ordered}; "
            f"mean median normal offset / mode spacing {offset:.4g} (< 0.05) at ridge time t = "
            f"{m0['test/ridge_time']:.4g} (median relative eigengap at d* {m0['test/eigengap_train']:.3g} at "
            "the "
            f"modes, {m0['test/eigengap_samples']:.3g} at the samples); tangent share > normal share over"
            " the last "
            f"20% of analysed steps: {slide_ok}; thresholds {dict(cfg.job.thresholds)}; "
            f"n = {int(m0['test/n_samples'])} samples, phases on {cfg.job.n_traj} trajectories. " + "; ".join(per_seed),
        )
    small_tau = _group(variants, widths[-1], False, finite_taus[0]) if finite_taus else []
    key = "test/inter_mode_fraction"
    if not big or not small_tau:
        out["less_training_more_intermode"] = Claim.uncomputable(
            "needs the largest width at tau = inf and at a finite tau"
        )
    else:
        a, b, se, how = _compare(small_tau, big, key)
        out["less_training_more_intermode"] = Claim(
            a - b > 2 * se,
            a,
            b,
            f"inter-mode fraction at width {int(widths[-1])}: tau = {finite_taus[0]:g} {a:.3f} vs tau = inf "
            f"{b:.3f} ({how}); holds when the difference exceeds 2 SE = {2 * se:.3f}",
        )
    narrow = _group(variants, widths[0], True)
    if not big or not narrow or len(widths) < 2:
        out["narrower_features_more_intermode"] = Claim.uncomputable("needs two widths at tau = inf")
    else:
        a, b, se, how = _compare(narrow, big, key)
        out["narrower_features_more_intermode"] = Claim(
            a - b > 2 * se,
            a,
            b,
            f"inter-mode fraction at tau = inf: width {int(widths[0])} {a:.3f} vs width {int(widths[-1])} "
            f"{b:.3f} ({how}); holds when the difference exceeds 2 SE = {2 * se:.3f}",
        )
    return out
