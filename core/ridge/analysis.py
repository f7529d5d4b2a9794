"""Ridge geometry of sampling trajectories (docs/methods/ridge_phases.md): reach, align, slide.

:func:`analyse_sampling` is the measurement (used by callbacks.ridge.RidgeCallback and by the
ridge experiments' jobs): along trajectories (K+1, B, d) it tracks the normal offset to the ridge of
p_t at the ridge time and the normal / tangent shares of each step's displacement, and detects the
phases. The displacement of an analysed step is either the raw increment over ``stride`` steps or,
with :func:`sde_drift_displacement`, the drift part of the reverse SDE (free of the sampler's
isotropic noise). Figures of these measurements: core.ridge.figures.
"""

from __future__ import annotations

import math

import torch

from core.diffusion.processes import ScalarProcess
from core.ridge.geometry import (
    nearest_neighbour_spacing,
    project_to_ridge,
    ridge_geometry,
    time_for_noise_to_signal,
    unique_with_weights,
)
from core.ridge.phases import PhaseTimes, RidgeSeries, detect_phases, ridge_series


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
