"""Figures of the ridge analysis (core.ridge.analysis): trajectories over the smoothed density with
the ridge drawn (2-D data), a principal-axis projection (higher dimensions), and the phase series."""

from __future__ import annotations

import torch

from core.diffusion.processes import ScalarProcess
from core.ridge.geometry import empirical_log_density, ridge_geometry, unique_with_weights
from core.ridge.phases import PhaseTimes, RidgeSeries


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
