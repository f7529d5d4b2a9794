"""Transport cost of generation paths (probability-flow ODE trajectories) in data space.

A path x(tau) from the prior end (tau = 0) to the data end (tau = 1) has kinetic energy
E = int_0^1 |dx/dtau|^2 dtau >= |x(1) - x(0)|^2 (Cauchy-Schwarz), with equality iff the path is a
straight line at constant speed. We report the ratio E / |x(1) - x(0)|^2 (1 = straight).

To make paths from different samplers comparable, each path, given at its own grid times t_k,
is first mapped to normalised time tau = (t_0 - t) / (t_0 - t_K) and resampled by linear
interpolation on a common uniform grid of ``n_grid`` + 1 points. The PF-ODE carries no injected
noise, and the common grid keeps the number of solver steps from setting the number of segments.
"""

from __future__ import annotations

import torch


def resample_path(path: torch.Tensor, times: torch.Tensor, n_grid: int = 100) -> torch.Tensor:
    """Linear interpolation of ``path`` (K+1, N, d) given at monotone ``times`` (K+1,) onto
    n_grid + 1 uniform points of tau in [0, 1]. Returns (n_grid + 1, N, d)."""
    if path.ndim != 3 or path.shape[0] != times.shape[0]:
        raise ValueError(f"path must be (K+1, N, d) matching times (K+1,); got {tuple(path.shape)}, "
                         f"{tuple(times.shape)}")
    times = times.to(path.dtype)
    tau = (times[0] - times) / (times[0] - times[-1])
    grid = torch.linspace(0.0, 1.0, n_grid + 1, dtype=path.dtype)
    idx = torch.searchsorted(tau.contiguous(), grid, right=True).clamp(1, len(tau) - 1)
    lo, hi = tau[idx - 1], tau[idx]
    w = ((grid - lo) / (hi - lo).clamp_min(1e-12)).reshape(-1, 1, 1)
    return (1 - w) * path[idx - 1] + w * path[idx]


def path_energy(path: torch.Tensor) -> torch.Tensor:
    """Kinetic energy sum_j |x_{j+1} - x_j|^2 / dtau of a path on a uniform grid (J+1, N, d) -> (N,)."""
    dtau = 1.0 / (path.shape[0] - 1)
    return (path[1:] - path[:-1]).pow(2).flatten(2).sum(-1).sum(0) / dtau


def transport_cost(path: torch.Tensor, times: torch.Tensor, n_grid: int = 100) -> torch.Tensor:
    """Ratio sum_n E_n / sum_n |x_n(1) - x_n(0)|^2 over a batch of paths (K+1, N, d); 1 = straight.

    A ratio of sums (not a mean of ratios) so that a path whose ends nearly coincide cannot blow
    the average up."""
    p = resample_path(path, times, n_grid)
    chord = (p[-1] - p[0]).pow(2).flatten(1).sum(-1)
    return path_energy(p).sum() / chord.sum().clamp_min(1e-12)
