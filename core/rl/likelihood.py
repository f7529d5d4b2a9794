"""Per-step (FlowGRPO-style) likelihood of a rectified-flow rollout and the KL between two policies.

A rollout is a ``core.diffusion.flow.FlowSample`` of ``flow_sample(..., solver="sde",
sde_noise="flowgrpo", return_trajectory=True)``: its trajectory holds the states x_0 .. x_K along
``times`` (decreasing from ~1 to 0) and ``stds`` the std of every Gaussian transition (FlowGRPO's SDE,
docs/methods/rl_elbo.md; Liu et al. 2025, eq. 9):

    x_{k+1} ~ N(mu_theta(x_k, t_k), std_k^2 I),
    mu_theta = x (1 + std_t^2 / (2 t) dt) + v_theta (1 + std_t^2 (1 - t) / (2 t)) dt,  std_t = std_k / sqrt(-dt),

so the log-density of the rollout's own transitions under another velocity v_theta is a sum of
Gaussian log-densities, differentiable in theta through mu_theta. Every batched velocity call is
charged to an optional ``core.utils.nfe.EvalCounter`` as ``counter.add(1, N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from core.diffusion.flow import FlowSample, Velocity, sde_mean
from core.utils.nfe import EvalCounter


def _call(velocity: Velocity, x: Tensor, t: float, counter: EvalCounter | None) -> Tensor:
    if counter is not None:
        counter.add(1, x.shape[0])
    return velocity(x, torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype))


def _selected_steps(traj: FlowSample, steps: Sequence[int] | None) -> list[int]:
    noisy = traj.noisy_steps
    if traj.trajectory is None:
        raise ValueError("per-step likelihood needs the rollout's states: sample with return_trajectory=True")
    if not noisy:
        raise ValueError(
            "per-step likelihood needs a stochastic rollout: this trajectory has no noisy step "
            "(an ODE or linear-SDE rollout); roll out with solver='sde', sde_noise='flowgrpo' or use the elbo estimator"
        )
    if steps is None:
        return noisy
    chosen = [int(k) for k in steps]
    bad = [k for k in chosen if k not in noisy]
    if bad:
        raise ValueError(f"steps {bad} are not noisy steps of this trajectory (noisy steps: {noisy})")
    return chosen


def _transition_mean(
    traj: FlowSample, velocity: Velocity, k: int, noise_level: float, counter: EvalCounter | None
) -> tuple[Tensor, float]:
    """Mean (N, *S) under ``velocity`` and the std of step k, with the std the rollout recorded.

    The mean depends on std_t (the SDE's drift correction), so it is rebuilt from the recorded
    transition std (std_t = std / sqrt(-dt)): the likelihood is that of the process that made the
    rollout, whatever sigma cap it used.
    """
    if traj.noise_level is not None and abs(noise_level - traj.noise_level) > 1e-9:
        raise ValueError(
            f"noise_level={noise_level} differs from the rollout's noise_level={traj.noise_level}; "
            "the per-step likelihood must use the sampler's transitions"
        )
    t, dt = float(traj.times[k]), float(traj.times[k + 1] - traj.times[k])
    std = float(traj.stds[k])
    x = traj.trajectory[k]
    return sde_mean(x, _call(velocity, x, t, counter), t, dt, std / math.sqrt(-dt)), std


def per_step_logprob(
    traj: FlowSample,
    velocity: Velocity,
    noise_level: float = 0.7,
    steps: Sequence[int] | None = None,
    counter: EvalCounter | None = None,
) -> Tensor:
    """(N,) sum over the noisy steps k (or the subset ``steps``) of log N(x_{k+1}; mu_theta(x_k, t_k), std_k^2 I).

    Differentiable in ``velocity``'s parameters through mu_theta; the stds are the rollout's (fixed).
    The full Gaussian log-density (with -D/2 log(2 pi std^2)) is returned, so a 1-step rollout gives
    the exact transition density; the constant cancels in a log-ratio. One call per selected step.
    Raises ValueError when the trajectory has no noisy step (an ODE rollout).
    """
    x0 = traj.trajectory[0]
    total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    dims = tuple(range(1, x0.ndim))
    d = x0[0].numel()
    for k in _selected_steps(traj, steps):
        mean, std = _transition_mean(traj, velocity, k, noise_level, counter)
        sq = ((traj.trajectory[k + 1] - mean) ** 2).sum(dim=dims) if dims else (traj.trajectory[k + 1] - mean) ** 2
        total = total - sq / (2.0 * std**2) - 0.5 * d * math.log(2.0 * math.pi * std**2)
    return total


def per_step_kl(
    traj: FlowSample,
    velocity: Velocity,
    velocity_ref: Velocity,
    noise_level: float = 0.7,
    steps: Sequence[int] | None = None,
    counter: EvalCounter | None = None,
) -> Tensor:
    """(N,) sum over noisy steps of KL(N(mu_theta, std^2) || N(mu_ref, std^2)) = |mu_theta - mu_ref|^2 / (2 std_k^2).

    The reference is evaluated without gradient (it is frozen); both calls are counted (2 per step).
    """
    x0 = traj.trajectory[0]
    total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    dims = tuple(range(1, x0.ndim))
    for k in _selected_steps(traj, steps):
        mean, std = _transition_mean(traj, velocity, k, noise_level, counter)
        with torch.no_grad():
            mean_ref, _ = _transition_mean(traj, velocity_ref, k, noise_level, counter)
        sq = ((mean - mean_ref) ** 2).sum(dim=dims) if dims else (mean - mean_ref) ** 2
        total = total + sq / (2.0 * std**2)
    return total
