"""Rollouts of a rectified-flow model and the per-step (FlowGRPO-style) likelihood of a rollout.

Convention of the suite (``core.diffusion.processes.LinearPath``): x_t = (1 - t) x0 + t eps, t = 0 data, t = 1
noise, the velocity v(x, t) estimates u = eps - x0. Sampling integrates from t = 1 down to t = 0,
so every step has dt = t_{k+1} - t_k < 0.

A velocity callable is ``velocity(x: (N, *S), t: (N,)) -> (N, *S)``; the caller closes over the
conditioning and classifier-free guidance. Every batched call of it is charged to an optional
``core.utils.nfe.EvalCounter`` as ``counter.add(1, N)`` (one call, N rows).

FlowGRPO's SDE step (METHODS.md section 2; Liu et al. 2025, eq. 9): with sigma = t and
std_t = a sqrt(sigma / (1 - sigma)), the reverse-time SDE with the same marginals as the ODE
dx = v dt is dx = [v - std_t^2 / 2 * score] dt + std_t dW, and for this path the score of x_t is
-(x + (1 - t) v) / t. Its Euler-Maruyama step is
    mean = x (1 + std_t^2 / (2 sigma) dt) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt,
    x'   = mean + std_t sqrt(-dt) z,  z ~ N(0, I),
a Gaussian transition whose log-density in the policy's parameters is the per-step likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.utils.nfe import EvalCounter

Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Trajectory:
    """States of one batched rollout.

    xs: (K+1, N, *S) states at ``times`` (xs[0] the initial noise, xs[-1] the final sample);
    times: (K+1,) decreasing from ~1 to 0; stds: (K,) std of step k's Gaussian transition
    (0 for deterministic steps); noise_level: the ``a`` the rollout used (None for an ODE rollout),
    so the likelihood recomputes the same transition means.
    """

    xs: Tensor
    times: Tensor
    stds: Tensor
    noise_level: float | None = None

    @property
    def final(self) -> Tensor:
        """(N, *S) the rollout's sample at times[-1]."""
        return self.xs[-1]

    @property
    def noisy_steps(self) -> list[int]:
        """Indices k of the steps with a Gaussian (std > 0) transition."""
        return [k for k in range(len(self.stds)) if float(self.stds[k]) > 0.0]


def rollout_times(num_steps: int, t_start: float = 1.0, device: torch.device | str | None = None) -> Tensor:
    """(num_steps+1,) uniform grid from ``t_start`` down to 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(t_start, 0.0, num_steps + 1, device=device)


def sde_std(t: float, dt: float, noise_level: float = 0.7, sigma_max: float | None = None) -> float:
    """std_t = a sqrt(sigma / (1 - sigma)) with sigma = t (FlowGRPO).

    At sigma = 1 the denominator would vanish; as in FlowGRPO the sigma in the denominator is then
    capped at ``sigma_max``, by default the next grid time t + dt (FlowGRPO's ``sigmas[1]``),
    and never above 1 - 1e-3 so the std stays finite.
    """
    if t <= 0.0:
        return 0.0
    den_sigma = t
    if t >= 1.0:
        den_sigma = t + dt if sigma_max is None else sigma_max
    den_sigma = min(den_sigma, 1.0 - 1e-3)
    return noise_level * math.sqrt(t / (1.0 - den_sigma))


def flow_sde_step(
    x: Tensor, v: Tensor, t: float, dt: float, noise_level: float = 0.7, sigma_max: float | None = None
) -> tuple[Tensor, float]:
    """Mean and std of FlowGRPO's Gaussian transition x_t -> x_{t+dt} (dt < 0).

    x, v: (N, *S) the state and the velocity at it; returns (mean (N, *S), transition std =
    std_t sqrt(-dt)) with mean = x (1 + std_t^2/(2 sigma) dt) + v (1 + std_t^2 (1-sigma)/(2 sigma)) dt.
    ``noise_level`` = 0 gives the Euler ODE step (mean = x + v dt, std 0). ``sigma_max``: see sde_std.
    """
    if dt >= 0.0:
        raise ValueError(f"flow_sde_step integrates from noise to data: dt must be < 0, got {dt}")
    if t <= 0.0:
        raise ValueError(f"flow_sde_step needs t > 0 (sigma = t), got {t}")
    std_t = sde_std(t, dt, noise_level, sigma_max)
    return _sde_mean(x, v, t, dt, std_t), std_t * math.sqrt(-dt)


def _sde_mean(x: Tensor, v: Tensor, t: float, dt: float, std_t: float) -> Tensor:
    c = std_t**2 / (2.0 * t)
    return x * (1.0 + c * dt) + v * (1.0 + c * (1.0 - t)) * dt


def _check_times(times: Tensor, x1: Tensor) -> None:
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must be a 1-D tensor of >= 2 grid points, got shape {tuple(times.shape)}")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must decrease strictly (sampling runs from t~1 noise to t=0 data)")
    if x1.ndim < 1:
        raise ValueError(f"x1 must have a batch dimension (N, *S), got shape {tuple(x1.shape)}")


def _call(velocity: Velocity, x: Tensor, t: float, counter: EvalCounter | None) -> Tensor:
    if counter is not None:
        counter.add(1, x.shape[0])
    return velocity(x, torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype))


@torch.no_grad()
def sde_rollout(
    x1: Tensor,
    times: Tensor,
    velocity: Velocity,
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
    counter: EvalCounter | None = None,
    *,
    noisy_steps: Sequence[int] | None = None,
    noise_fn: Callable[[int], Tensor] | None = None,
    sigma_max: float | None = None,
) -> Trajectory:
    """Roll out FlowGRPO's SDE from x1 (N, *S) along ``times`` (K+1,) decreasing; no gradient.

    Extra keywords: ``noisy_steps`` restricts the stochastic steps to these indices (the others
    are Euler ODE steps with std 0, as in FlowGRPO-Fast / MixGRPO); ``noise_fn(k) -> (N, *S)``
    supplies step k's standard normal noise (e.g. the module's keyed example_normal) instead of
    ``torch.randn(generator=generator)``. One velocity call per step: K calls of N rows.
    """
    _check_times(times, x1)
    noisy = set(range(len(times) - 1)) if noisy_steps is None else {int(k) for k in noisy_steps}
    xs, stds = [x1], []
    x = x1
    for k in range(len(times) - 1):
        t, dt = float(times[k]), float(times[k + 1] - times[k])
        v = _call(velocity, x, t, counter)
        if k in noisy and noise_level > 0.0 and t > 0.0:
            mean, std = flow_sde_step(x, v, t, dt, noise_level, sigma_max)
            z = noise_fn(k) if noise_fn is not None else torch.randn(x.shape, generator=generator, device=x.device)
            x = mean + std * z.to(dtype=x.dtype, device=x.device)
        else:
            x, std = x + v * dt, 0.0
        xs.append(x)
        stds.append(std)
    return Trajectory(torch.stack(xs), times.clone(), torch.tensor(stds, dtype=x1.dtype), noise_level)


@torch.no_grad()
def ode_rollout(x1: Tensor, times: Tensor, velocity: Velocity, counter: EvalCounter | None = None) -> Trajectory:
    """Euler integration of dx = v dt from x1 (N, *S) along ``times`` (K+1,); all stds are 0."""
    _check_times(times, x1)
    xs = [x1]
    x = x1
    for k in range(len(times) - 1):
        t, dt = float(times[k]), float(times[k + 1] - times[k])
        x = x + _call(velocity, x, t, counter) * dt
        xs.append(x)
    return Trajectory(torch.stack(xs), times.clone(), torch.zeros(len(times) - 1, dtype=x1.dtype), None)


def _selected_steps(traj: Trajectory, steps: Sequence[int] | None) -> list[int]:
    noisy = traj.noisy_steps
    if not noisy:
        raise ValueError(
            "per-step likelihood needs a stochastic rollout: this trajectory has no noisy step "
            "(all stds are 0, e.g. an ode_rollout); use sde_rollout or the elbo estimator"
        )
    if steps is None:
        return noisy
    chosen = [int(k) for k in steps]
    bad = [k for k in chosen if k not in noisy]
    if bad:
        raise ValueError(f"steps {bad} are not noisy steps of this trajectory (noisy steps: {noisy})")
    return chosen


def _transition_mean(
    traj: Trajectory, velocity: Velocity, k: int, noise_level: float, counter: EvalCounter | None
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
    x = traj.xs[k]
    return _sde_mean(x, _call(velocity, x, t, counter), t, dt, std / math.sqrt(-dt)), std


def per_step_logprob(
    traj: Trajectory,
    velocity: Velocity,
    noise_level: float = 0.7,
    steps: Sequence[int] | None = None,
    counter: EvalCounter | None = None,
) -> Tensor:
    """(N,) sum over the noisy steps k (or the subset ``steps``) of log N(xs[k+1]; mu_theta(xs[k], t_k), std_k^2 I).

    Differentiable in ``velocity``'s parameters through mu_theta; the stds are the rollout's (fixed).
    The full Gaussian log-density (with -D/2 log(2 pi std^2)) is returned, so a 1-step rollout gives
    the exact transition density; the constant cancels in a log-ratio. One call per selected step.
    Raises ValueError when the trajectory has no noisy step (an ODE rollout).
    """
    total = torch.zeros(traj.xs.shape[1], dtype=traj.xs.dtype, device=traj.xs.device)
    dims = tuple(range(1, traj.xs.ndim - 1))
    d = traj.xs[0, 0].numel()
    for k in _selected_steps(traj, steps):
        mean, std = _transition_mean(traj, velocity, k, noise_level, counter)
        sq = ((traj.xs[k + 1] - mean) ** 2).sum(dim=dims) if dims else (traj.xs[k + 1] - mean) ** 2
        total = total - sq / (2.0 * std**2) - 0.5 * d * math.log(2.0 * math.pi * std**2)
    return total


def per_step_kl(
    traj: Trajectory,
    velocity: Velocity,
    velocity_ref: Velocity,
    noise_level: float = 0.7,
    steps: Sequence[int] | None = None,
    counter: EvalCounter | None = None,
) -> Tensor:
    """(N,) sum over noisy steps of KL(N(mu_theta, std^2) || N(mu_ref, std^2)) = |mu_theta - mu_ref|^2 / (2 std_k^2).

    The reference is evaluated without gradient (it is frozen); both calls are counted (2 per step).
    """
    total = torch.zeros(traj.xs.shape[1], dtype=traj.xs.dtype, device=traj.xs.device)
    dims = tuple(range(1, traj.xs.ndim - 1))
    for k in _selected_steps(traj, steps):
        mean, std = _transition_mean(traj, velocity, k, noise_level, counter)
        with torch.no_grad():
            mean_ref, _ = _transition_mean(traj, velocity_ref, k, noise_level, counter)
        sq = ((mean - mean_ref) ** 2).sum(dim=dims) if dims else (mean - mean_ref) ** 2
        total = total + sq / (2.0 * std**2)
    return total
