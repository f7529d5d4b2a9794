"""Ridge geometry of sampling trajectories (METHODS.md sec. 1): reach, align, slide.

:func:`analyse_sampling` is the measurement (used by :class:`RidgeCallback` and by the ridge
experiments' jobs); the callback runs it at validation time on any module that offers
``sample(n, generator, return_trajectory=True)`` (a :class:`core.diffusion.solvers.SampleResult`) and a
datamodule with ``train_tensor()``. When the module has ``process`` (a scalar process) and
``score(x, t)``, the displacement of each analysed step is the drift part of the reverse SDE
(free of the sampler's isotropic noise); otherwise the raw increments over ``stride`` steps.
A module whose trajectories live in another space (a latent) provides ``ridge_reference()``,
the training set in that space.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from core.ridge.phases import PhaseTimes, RidgeSeries, detect_phases, ridge_series
from core.diffusion.processes import ScalarProcess
from core.ridge.geometry import (
    nearest_neighbour_spacing,
    project_to_ridge,
    ridge_geometry,
    time_for_noise_to_signal,
    unique_with_weights,
)


def ridge_time_by_spacing(train: torch.Tensor, process: ScalarProcess, factor: float = 1.0) -> float:
    """t with sqrt(h_t) / a_t = factor * (median nearest-neighbour spacing of the training set)."""
    pts, _ = unique_with_weights(train)
    return time_for_noise_to_signal(process, factor * nearest_neighbour_spacing(pts))


def ridge_time_by_eigengap(
    train: torch.Tensor,
    process: ScalarProcess,
    d_star: int,
    min_gap: float = 1e-3,
    n_candidates: int = 60,
    max_points: int = 500,
) -> tuple[float, float]:
    """Smallest t on a geometric grid in [t_min, T] where the median relative eigengap (units 1/h_t)
    at the training points is >= ``min_gap``. Returns (t, that median gap)."""
    pts, w = unique_with_weights(train)
    query = pts[:max_points]
    for t in torch.exp(torch.linspace(math.log(max(process.t_min, 1e-4)), math.log(process.T), n_candidates)):
        gap = float(ridge_geometry(query, pts, process, float(t), d_star, w).relative_eigengap.median())
        if gap >= min_gap:
            return float(t), gap
    raise ValueError(f"no time in [t_min, T] gives a median relative eigengap >= {min_gap} at d_star = {d_star}")


def final_sample_metrics(
    x: torch.Tensor,
    train: torch.Tensor,
    process: ScalarProcess,
    d_star: int,
    ridge_time: float,
    max_iter: int = 50,
) -> dict[str, torch.Tensor]:
    """Per-sample ridge statistics of final samples x (B, d) in data units, against the ridge of
    p_{t_r} brought to data scale (points a_{t_r} x; offsets divided by a_{t_r}).

    Returns ``normal_offset`` (B,) = |x - P(x)| (SCMS projection), ``normalized_normal_score`` (B,),
    ``eigengap`` (B,) relative eigengap, ``projection`` (B, d).
    """
    pts, w = unique_with_weights(train)
    a_r = float(process.alpha(torch.tensor(ridge_time, dtype=torch.float64)))
    proj = project_to_ridge(a_r * x.double(), pts, process, ridge_time, d_star, w, max_iter=max_iter)
    geo = ridge_geometry(a_r * x.double(), pts, process, ridge_time, d_star, w)
    return {
        "normal_offset": proj.offset / a_r,
        "normalized_normal_score": geo.normalized_normal_score,
        "eigengap": geo.relative_eigengap,
        "projection": proj.x / a_r,
    }


def analyse_sampling(
    trajectory: torch.Tensor,
    times: torch.Tensor,
    train: torch.Tensor,
    process: ScalarProcess,
    d_star: int,
    ridge_time: float,
    length_scale: float,
    thresholds: dict,
    stride: int = 1,
    displacements=None,
    min_gap: float = 1e-6,
) -> tuple[RidgeSeries, PhaseTimes, dict]:
    """Series along trajectories (K+1, B, d), phases and summary scalars.

    ``distance`` for reach = median normal offset / ``length_scale``; steps whose median relative
    eigengap is below ``min_gap`` (normal space numerically undefined: at a relative gap g the
    eigenvectors carry errors ~ 1e-16 / g) never satisfy a phase condition.
    ``thresholds``: reach, align, slide, smooth, persist (see core.ridge.phases.detect_phases).
    """
    pts, w = unique_with_weights(train)
    series = ridge_series(trajectory, times, pts, process, d_star, ridge_time, w, stride, displacements)
    valid = series.eigengap >= min_gap
    phases = detect_phases(
        series.normal_offset / length_scale,
        series.normal_share,
        series.times,
        float(thresholds["reach"]),
        float(thresholds["align"]),
        float(thresholds["slide"]),
        int(thresholds.get("smooth", 3)),
        int(thresholds.get("persist", 2)),
        valid,
    )
    n_last = max(1, math.ceil(0.2 * len(series.times)))
    summary = {
        "last20_tangent_share": float(series.tangent_share[-n_last:].mean()),
        "last20_normal_share": float(series.normal_share[-n_last:].mean()),
        "phases_ordered": float(phases.ordered),
        "valid_steps": float(valid.double().mean()),
    }
    for name in ("reach", "align", "align_end", "slide"):
        step = getattr(phases, name)
        summary[f"t_{name}"] = phases.time_of(step) if step is not None else float("nan")
    return series, phases, summary


def plot_ridge_2d(
    trajectory: torch.Tensor,
    train: torch.Tensor,
    process: ScalarProcess,
    ridge_time: float,
    d_star: int,
    final: torch.Tensor,
    title: str = "",
    n_traj: int = 30,
):
    """Trajectories (data units, x_k / a_{t_k}; pass the late part) over log p of the data smoothed at
    the ridge time, with the ridge (normalised normal score < 0.05, normal eigenvalues < 0) drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, w = unique_with_weights(train)
    a_r = float(process.alpha(torch.tensor(ridge_time, dtype=torch.float64)))
    lo = torch.minimum(pts.min(0).values, final.min(0).values)[:2].double()
    hi = torch.maximum(pts.max(0).values, final.max(0).values)[:2].double()
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2 + 1.0  # a square box
    lo, hi = centre - half, centre + half
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 120), torch.linspace(lo[1], hi[1], 120), indexing="xy")
    grid = torch.zeros(gx.numel(), pts.shape[1], dtype=torch.float64)
    grid[:, 0], grid[:, 1] = gx.reshape(-1), gy.reshape(-1)
    geo = ridge_geometry(a_r * grid, pts, process, ridge_time, d_star, w)
    from core.ridge.geometry import empirical_log_density

    logp = empirical_log_density(a_r * grid, pts, process, ridge_time, w).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5.0, 5.0))
    ax.contourf(gx, gy, logp, levels=30, cmap="Greys")
    on = (geo.normalized_normal_score < 0.05) & (geo.eigenvalues[:, : geo.normal_dim] < 0).all(1)
    ax.scatter(grid[on, 0], grid[on, 1], s=1, c="C3", label=f"ridge (t={ridge_time:.3g})")
    ax.plot(trajectory[:, :n_traj, 0], trajectory[:, :n_traj, 1], lw=0.5, c="C1", alpha=0.6)
    ax.scatter(final[:, 0], final[:, 1], s=3, c="C0", alpha=0.5, label="samples")
    ax.scatter(pts[:, 0], pts[:, 1], s=30, marker="x", c="k", label="data")
    ax.set_xlim(float(lo[0]), float(hi[0]))
    ax.set_ylim(float(lo[1]), float(hi[1]))
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    ax.set_title(title, fontsize=9)
    return fig


def plot_projection(
    trajectory: torch.Tensor, train: torch.Tensor, final: torch.Tensor, title: str = "", n_traj: int = 30
):
    """Training points, final samples and (late) trajectories on the top two principal axes of the
    training set, for data of more than two dimensions (e.g. a latent space)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = train.mean(0)
    _, _, vt = torch.linalg.svd(train - mean, full_matrices=False)
    axes = vt[:2].T  # (d, 2)

    def proj(x: torch.Tensor) -> torch.Tensor:
        return (x - mean) @ axes

    fig, ax = plt.subplots(figsize=(5.0, 5.0))
    tr = proj(trajectory[:, :n_traj].reshape(-1, train.shape[1])).reshape(len(trajectory), -1, 2)
    ax.plot(tr[:, :, 0], tr[:, :, 1], lw=0.5, c="C1", alpha=0.5)
    ax.scatter(*proj(train).T, s=4, c="0.4", label="training points")
    ax.scatter(*proj(final).T, s=4, c="C0", alpha=0.6, label="samples")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    ax.set_title(title, fontsize=9)
    return fig


def plot_series(series: RidgeSeries, phases: PhaseTimes, title: str = ""):
    """Distance, normal/tangent shares and eigengap against sampling time, phase starts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    t = series.times.numpy()
    axes[0].loglog(t, series.normal_offset.numpy(), label="normal offset (median)")
    axes[0].loglog(t, series.distance.numpy(), label="|E E^T s| / |s| (median)")
    axes[0].loglog(t, series.eigengap.clamp_min(1e-12).numpy(), label="rel. eigengap", ls=":")
    axes[1].semilogx(t, series.normal_share.numpy(), label="normal share")
    axes[1].semilogx(t, series.tangent_share.numpy(), label="tangent share")
    for name, c in (("reach", "C2"), ("align", "C3"), ("slide", "C4")):
        tt = phases.time_of(getattr(phases, name))
        if tt is not None:
            for ax in axes:
                ax.axvline(tt, c=c, ls="--", lw=0.8, label=name if ax is axes[1] else None)
    for ax in axes:
        ax.invert_xaxis()
        ax.set_xlabel("sampling time t")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def sde_drift_displacement(module, times: torch.Tensor):
    """(k, x_k) -> f(t_k) x_k dt - g(t_k)^2 s(x_k, t_k) dt with dt = t_{k+1} - t_k: the drift part
    of the module's reverse-SDE step (DESIGN: process + score)."""
    process = module.process

    @torch.no_grad()
    def disp(k: int, x: torch.Tensor) -> torch.Tensor:
        t0, dt = times[k], times[k + 1] - times[k]
        tv = t0.to(x.dtype).expand(x.shape[0]).to(module.device)
        xs = x.to(module.device, torch.float32)
        drift = process.drift_coef(tv)[:, None] * xs - process.diffusion_sq(tv)[:, None] * module.score(xs, tv)
        return (drift * dt).cpu()

    return disp


class RidgeCallback(L.Callback):
    """Samples with trajectories every ``every_n_steps`` (at validation) and logs ridge metrics.

    Logged (``ridge/...``): final-sample median normal offset and normalised normal score, eigengap,
    fraction near a training point / on the ridge away from training points, phase start times
    (``t_reach`` ...), last-20% tangent/normal shares; figures of trajectories (2-D) and series.
    ``ridge_time``: a float, or ``auto`` (sqrt(h)/a = ``spacing_factor`` x nearest-neighbour spacing).
    Thresholds are config values, fixed before the run.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        n: int = 256,
        d_star: int = 1,
        ridge_time: float | str = "auto",
        spacing_factor: float = 1.0,
        reach: float = 0.5,
        align: float = 0.6,
        slide: float = 0.6,
        smooth: int = 3,
        persist: int = 2,
        n_steps_analysed: int = 50,
        near_radius: float = 0.1,
        ridge_radius: float = 0.05,
        max_train: int = 2000,
        seed: int = 0,
    ) -> None:
        if not (isinstance(ridge_time, (int, float)) or ridge_time == "auto"):
            raise ValueError(f"callbacks.ridge.ridge_time must be a number or 'auto', got {ridge_time!r}")
        self.every_n_steps, self.n, self.d_star, self.ridge_time = every_n_steps, n, d_star, ridge_time
        self.spacing_factor, self.n_steps_analysed, self.seed = spacing_factor, n_steps_analysed, seed
        self.thresholds = {
            "reach": reach,
            "align": align,
            "slide": slide,
            "smooth": smooth,
            "persist": persist,
        }
        self.near_radius, self.ridge_radius, self.max_train = near_radius, ridge_radius, max_train
        self._last_step = -1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if trainer.sanity_checking or step == self._last_step or not (due or last):
            return
        if not getattr(pl_module, "ridge_ready", True):  # e.g. a latent model still training its VAE
            return
        self._last_step = step
        self.measure(trainer, pl_module)

    def _reference(self, trainer, pl_module) -> torch.Tensor:
        if hasattr(pl_module, "ridge_reference"):
            ref = pl_module.ridge_reference()
        else:
            ref = trainer.datamodule.train_tensor()
        ref = ref.detach().double().cpu().reshape(len(ref), -1)
        g = torch.Generator().manual_seed(self.seed)
        return ref[torch.randperm(len(ref), generator=g)[: self.max_train]] if len(ref) > self.max_train else ref

    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if not trainer.is_global_zero:
            return {}
        train = self._reference(trainer, pl_module)
        if train.shape[1] <= self.d_star:
            raise ValueError(
                f"callbacks.ridge.d_star = {self.d_star} must be below the data dimension {train.shape[1]}"
            )
        res = pl_module.sample(self.n, generator=torch.Generator().manual_seed(self.seed), return_trajectory=True)
        traj = torch.stack([s.detach().double().cpu().reshape(self.n, -1) for s in res.trajectory])
        times = res.times.detach().double().cpu()
        process = pl_module.process
        t_r = (
            ridge_time_by_spacing(train, process, self.spacing_factor)
            if self.ridge_time == "auto"
            else float(self.ridge_time)
        )
        spacing = nearest_neighbour_spacing(unique_with_weights(train)[0])
        stride = max(1, (len(times) - 1) // self.n_steps_analysed)
        disp = sde_drift_displacement(pl_module, times) if hasattr(pl_module, "score") else None
        series, phases, summary = analyse_sampling(
            traj, times, train, process, self.d_star, t_r, spacing, self.thresholds, stride, disp
        )
        a_end = float(process.alpha(times[-1]))
        final = final_sample_metrics(traj[-1] / a_end, train, process, self.d_star, t_r)
        d_near = torch.cdist(traj[-1] / a_end, unique_with_weights(train)[0]).min(1).values
        near = d_near <= self.near_radius * spacing
        between = (~near) & (final["normal_offset"] <= self.ridge_radius * spacing)
        metrics = {
            "ridge/time": t_r,
            "ridge/eigengap": float(final["eigengap"].median()),
            "ridge/normal_offset": float(final["normal_offset"].median()),
            "ridge/normalized_normal_score": float(final["normalized_normal_score"].median()),
            "ridge/near_train_fraction": float(near.double().mean()),
            "ridge/on_ridge_between_fraction": float(between.double().mean()),
        }
        metrics.update({f"ridge/{k}": v for k, v in summary.items() if math.isfinite(v)})
        for k, v in metrics.items():
            pl_module.log(k, float(v), rank_zero_only=True)
        from callbacks.media import log_figure

        log_figure(trainer, "ridge/series", plot_series(series, phases, f"step {trainer.global_step}"))
        a = torch.tensor([float(process.alpha(t)) for t in times], dtype=torch.float64)
        late = traj[int((times > t_r).sum()) :] / a[int((times > t_r).sum()) :, None, None]  # t <= t_r
        if traj.shape[2] == 2:
            fig = plot_ridge_2d(
                late,
                train,
                process,
                t_r,
                self.d_star,
                traj[-1] / a_end,
                f"trajectories for t <= {t_r:.3g}, ridge of p_t at t = {t_r:.3g}",
            )
        else:
            fig = plot_projection(late, train, traj[-1] / a_end, f"principal-axis projection, t <= {t_r:.3g}")
        log_figure(trainer, "ridge/trajectories", fig)
        return metrics
