"""Reach / align / slide along sampling trajectories (docs/methods/ridge_phases.md), by fixed thresholds.

Inputs are trajectories x_k (K+1, B, d) on a decreasing time grid t_0 = T > ... > t_K and, per
step k, the ridge geometry of p_{t_k} at x_k (a :class:`core.ridge.geometry.RidgeGeometry`). Per step we log

* ``distance[k]``: median over samples of the normalised normal score |E E^T s| / |s| at x_{k+1};
* ``normal_share[k]`` / ``tangent_share[k]``: how the displacement x_{k+1} - x_k splits between the
  normal space E (d - d* dims) and the tangent space (d* dims), per dimension so that isotropic
  motion scores 1/2 whatever d*: with energies E_N = sum_b |E E^T dx_b|^2, E_T = sum_b |dx_b|^2 - E_N,
  normal_share = (E_N / (d - d*)) / (E_N / (d - d*) + E_T / d*), tangent_share = 1 - normal_share.

Phases, each detected on its own (so their order is a finding, not an assumption), after a centred
moving average over ``smooth`` steps, as the first step from which a condition holds for ``persist``
consecutive steps:

* reach: distance <= ``reach_threshold``;
* align: normal_share >= ``align_threshold`` (normal motion dominates), and it ends ("collapses")
  at the first later step where normal_share < ``align_threshold``;
* slide: tangent_share >= ``slide_threshold`` at a step after the normal share has peaked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def displacement_shares(dx: torch.Tensor, normal_part: torch.Tensor, d_star: int) -> tuple[float, float]:
    """(normal_share, tangent_share) of displacements dx (B, d) with normal components (B, d)."""
    d = dx.shape[1]
    e_n = float(normal_part.pow(2).sum())
    e_t = max(float(dx.pow(2).sum()) - e_n, 0.0)
    n_per, t_per = e_n / (d - d_star), e_t / d_star
    total = n_per + t_per
    if total <= 0:
        return 0.5, 0.5
    return n_per / total, t_per / total


def moving_average(v: torch.Tensor, window: int) -> torch.Tensor:
    """Centred moving average with edge windows shrunk to the available points; v (K,)."""
    if window <= 1:
        return v.clone()
    c = torch.cat([torch.zeros(1, dtype=v.dtype), torch.cumsum(v, 0)])
    k = torch.arange(len(v))
    lo = (k - window // 2).clamp_min(0)
    hi = (k + window - window // 2).clamp_max(len(v))
    return (c[hi] - c[lo]) / (hi - lo).to(v.dtype)


def first_persistent(cond: torch.Tensor, persist: int, start: int = 0) -> int | None:
    """First index i >= start with cond[i : i + persist] all true (fewer at the end); None if never."""
    n = len(cond)
    for i in range(start, n):
        j = min(i + persist, n)
        if bool(cond[i:j].all()):
            return i
    return None


@dataclass
class PhaseTimes:
    """Step indices (into the per-step series) and their sampling times; None when not detected."""

    reach: int | None
    align: int | None
    align_end: int | None
    slide: int | None
    times: torch.Tensor

    def time_of(self, step: int | None) -> float | None:
        return None if step is None else float(self.times[step])

    @property
    def ordered(self) -> bool:
        """reach <= align < slide, all detected."""
        if None in (self.reach, self.align, self.slide):
            return False
        return self.reach <= self.align < self.slide


def detect_phases(
    distance: torch.Tensor,
    normal_share: torch.Tensor,
    times: torch.Tensor,
    reach_threshold: float,
    align_threshold: float,
    slide_threshold: float,
    smooth: int = 5,
    persist: int = 3,
    valid: torch.Tensor | None = None,
) -> PhaseTimes:
    """Detect the phases on per-step series of length K (see the module docstring).

    ``times`` (K,) are the sampling times of the steps' end points; returns step indices.
    ``valid`` (K,) bool: steps where the geometry is defined; a condition never holds elsewhere.
    """
    if not (len(distance) == len(normal_share) == len(times)):
        raise ValueError(
            f"series lengths differ: distance {len(distance)}, normal_share {len(normal_share)}, "
            f"times {len(times)}"
        )
    dist = moving_average(distance.double(), smooth)
    ns = moving_average(normal_share.double(), smooth)
    ok = torch.ones(len(dist), dtype=torch.bool) if valid is None else valid.bool()
    reach = first_persistent((dist <= reach_threshold) & ok, persist)
    align = first_persistent((ns >= align_threshold) & ok, persist)
    align_end = None if align is None else first_persistent(ns < align_threshold, 1, align)
    peak = int(torch.argmax(torch.where(ok, ns, torch.zeros_like(ns))))
    slide = first_persistent(((1.0 - ns) >= slide_threshold) & ok, persist, peak + 1)
    return PhaseTimes(reach, align, align_end, slide, times)


@dataclass
class RidgeSeries:
    """Per-step ridge statistics along trajectories; every field has shape (K',) for the analysed steps.

    ``times``: t_k at the start of each analysed step; ``distance``: median normalised normal score
    |E E^T s|/|s| at x_k; ``normal_share``/``tangent_share``: split of dx_k = x_{k+1} - x_k (per
    dimension, see :func:`displacement_shares`); ``eigengap``: median relative eigengap (units 1/h_t);
    ``normal_step``/``tangent_step``: median |normal| and |tangent| part of dx_k; ``normal_offset``:
    median |E E^T (a mu - x)| = h |E E^T s|, the normal part of the mean-shift step, i.e. the
    first-order distance to the ridge (exact for the two-point line).
    """

    times: torch.Tensor
    distance: torch.Tensor
    normal_share: torch.Tensor
    tangent_share: torch.Tensor
    eigengap: torch.Tensor
    normal_step: torch.Tensor
    tangent_step: torch.Tensor
    normal_offset: torch.Tensor


def ridge_series(
    trajectory: torch.Tensor,
    times: torch.Tensor,
    train: torch.Tensor,
    process,
    d_star: int,
    ridge_time: float | None = None,
    weights: torch.Tensor | None = None,
    stride: int = 1,
    displacements: torch.Tensor | None = None,
) -> RidgeSeries:
    """Ridge statistics of trajectories (K+1, B, d) on the grid ``times`` (K+1,), every ``stride`` steps.

    The geometry is that of p_{ridge_time} (a fixed ridge, at a time where its eigengap is clear:
    at small t the Hessian of p_t near a training point is ~ -I/h_t and its eigenvectors are
    arbitrary), evaluated at x_k a_{t_r} / a_{t_k} (the point brought to the ridge's scale: the
    ridge of p_{t_r} is that of the data smoothed by sqrt(h)/a, shrunk by a_{t_r}); or of p_{t_k}
    at x_k itself when ``ridge_time`` is None. ``normal_offset`` is in data units (divided by a).
    The displacement of step k is
    ``displacements[k]`` (a (K, B, d) tensor, or a function (k, x_k) -> (B, d)) when given (e.g. the
    drift part f dt of the step, free of the sampler's isotropic noise), else x_{k+stride} - x_k.
    """
    from core.ridge.geometry import ridge_geometry  # local import keeps this module importable on its own

    if trajectory.ndim != 3 or trajectory.shape[0] != len(times):
        raise ValueError(f"trajectory must be (len(times)={len(times)}, B, d), got {tuple(trajectory.shape)}")
    rows = {
        k: []
        for k in (
            "times",
            "distance",
            "normal_share",
            "tangent_share",
            "eigengap",
            "normal_step",
            "tangent_step",
            "normal_offset",
        )
    }

    def alpha(t) -> float:
        return float(process.alpha(torch.as_tensor(t, dtype=torch.float64)))

    for k in range(0, len(times) - 1, stride):
        x = trajectory[k].double()
        k_end = k + 1 if displacements is not None else min(k + stride, len(times) - 1)
        if displacements is None:
            x_end = trajectory[k_end].double()
        elif callable(displacements):
            x_end = x + displacements(k, trajectory[k]).double()
        else:
            x_end = x + displacements[k].double()
        if ridge_time is None:
            t_geo, scale = float(times[k]), 1.0
            dx = x_end - x
        else:
            # Work in data coordinates x / a_t, where the ridge is fixed: there the displacement is
            # the score-driven part of the step (the sampler's undoing of the a_t contraction, a
            # radial motion, drops out). The ridge of p_{t_r} sits at scale a_{t_r}.
            t_geo = ridge_time
            a_r = alpha(ridge_time)
            scale = a_r / alpha(times[k])
            dx = a_r * (x_end / alpha(times[k_end]) - x / alpha(times[k]))
        geo = ridge_geometry(scale * x, train, process, t_geo, d_star, weights)
        normal = geo.normal_component(dx)
        ns, ts = displacement_shares(dx, normal, d_star)
        rows["times"].append(float(times[k]))
        rows["distance"].append(float(geo.normalized_normal_score.median()))
        rows["normal_share"].append(ns)
        rows["tangent_share"].append(ts)
        rows["eigengap"].append(float(geo.relative_eigengap.median()))
        rows["normal_step"].append(float(normal.norm(dim=1).median()))
        rows["tangent_step"].append(float((dx - normal).norm(dim=1).median()))
        rows["normal_offset"].append(float((geo.h * geo.normal_score_norm).median()) / alpha(t_geo))
    return RidgeSeries(**{k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items()})
