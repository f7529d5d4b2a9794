"""The one sampler of rectified-flow models: ODE (Euler / Heun) or one of two reverse-time SDEs.

Path (``core.diffusion.processes.LinearPath``): x_t = (1 - t) x0 + t eps, t = 0 data, t = 1 noise; the
velocity v(x, t) estimates u = eps - x0, and generation integrates from t = 1 down to t = 0, so every
step has dt = t_{k+1} - t_k < 0. A velocity is a callable ``velocity(x (N, *S), t (N,)) -> (N, *S)``;
the caller closes over conditioning and classifier-free guidance.

On this path the score of x_t is s = -(x + (1 - t) v) / t, and for any g(t) the SDE

    dx = [v - g(t)^2 / 2 * s] dt + g(t) dW          (dt < 0)

has the ODE's marginals. Two choices of g are offered (``sde_noise``):

* ``linear``: g(t) = a t, so g^2 s = -a^2 t (x + (1 - t) v) stays bounded at both ends; integrated
  by ``core.diffusion.solvers.euler_maruyama`` (the Shapes text-to-image model's SDE sampler);
* ``flowgrpo``: g(t) = std_t = a sqrt(t / (1 - t)) (FlowGRPO, Liu et al. 2025, eq. 9). Its
  Euler-Maruyama step is the Gaussian transition

      mean = x (1 + std_t^2 / (2 t) dt) + v (1 + std_t^2 (1 - t) / (2 t)) dt,
      x'   = mean + std_t sqrt(-dt) z,  z ~ N(0, I),

  whose log-density in the policy's parameters is RL's per-step likelihood (core.rl.likelihood);
  the rollout records every transition's std in :class:`FlowSample`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.diffusion.solvers import SampleResult, _counted, _run, euler_maruyama, ode_euler, ode_heun
from core.utils.nfe import EvalCounter

Velocity = Callable[[Tensor, Tensor], Tensor]
SOLVERS = ("euler", "heun", "sde")
SDE_NOISES = ("linear", "flowgrpo")


@dataclass
class FlowSample(SampleResult):
    """A SampleResult with what RL's per-step likelihood needs: ``stds`` (K,) the std of step k's
    Gaussian transition (0 for deterministic steps; None for the ``linear`` SDE, not recorded) and ``noise_level``, the ``a`` of a FlowGRPO
    rollout (None otherwise), so the likelihood rebuilds the same transition means."""

    stds: Tensor | None = None
    noise_level: float | None = None

    @property
    def noisy_steps(self) -> list[int]:
        """Indices k of the steps with a Gaussian (std > 0) transition."""
        return [] if self.stds is None else [k for k in range(len(self.stds)) if float(self.stds[k]) > 0.0]

    def rows(self, index: Tensor) -> FlowSample:
        """The same rollout restricted to the rows ``index`` of the batch."""
        traj = None if self.trajectory is None else [s[index] for s in self.trajectory]
        return FlowSample(self.x[index], self.times, self.nfe, traj, self.stds, self.noise_level)


def sde_std(t: float, dt: float, noise_level: float = 0.7, sigma_max: float | None = None) -> float:
    """std_t = a sqrt(t / (1 - t)) (FlowGRPO, sigma = t).

    At t = 1 the denominator would vanish; as in FlowGRPO the t in the denominator is then capped at
    ``sigma_max``, by default the next grid time t + dt (FlowGRPO's ``sigmas[1]``), and never above
    1 - 1e-3 so the std stays finite.
    """
    if t <= 0.0:
        return 0.0
    den_sigma = t
    if t >= 1.0:
        den_sigma = t + dt if sigma_max is None else sigma_max
    den_sigma = min(den_sigma, 1.0 - 1e-3)
    return noise_level * math.sqrt(t / (1.0 - den_sigma))


def sde_mean(x: Tensor, v: Tensor, t: float, dt: float, std_t: float) -> Tensor:
    """Mean of FlowGRPO's transition with diffusion std_t (see the module docstring)."""
    c = std_t**2 / (2.0 * t)
    return x * (1.0 + c * dt) + v * (1.0 + c * (1.0 - t)) * dt


def flow_sde_step(
    x: Tensor, v: Tensor, t: float, dt: float, noise_level: float = 0.7, sigma_max: float | None = None
) -> tuple[Tensor, float]:
    """Mean (N, *S) and std (std_t sqrt(-dt)) of FlowGRPO's Gaussian transition x_t -> x_{t+dt}, dt < 0.
    ``noise_level`` = 0 gives the Euler ODE step (mean = x + v dt, std 0)."""
    if dt >= 0.0:
        raise ValueError(f"flow_sde_step integrates from noise to data: dt must be < 0, got {dt}")
    if t <= 0.0:
        raise ValueError(f"flow_sde_step needs t > 0 (sigma = t), got {t}")
    std_t = sde_std(t, dt, noise_level, sigma_max)
    return sde_mean(x, v, t, dt, std_t), std_t * math.sqrt(-dt)


def linear_sde(velocity: Velocity, noise_level: float):
    """(drift, diffusion) of the SDE with g(t) = a t: drift v + (a^2 / 2) t (x + (1 - t) v)."""
    a = noise_level

    def drift(x: Tensor, t: Tensor) -> Tensor:
        v = velocity(x, t)
        tt = t.view(-1, *([1] * (x.ndim - 1)))
        return v + 0.5 * a**2 * tt * (x + (1 - tt) * v)

    def diffusion(t: Tensor) -> Tensor:
        return a * t

    return drift, diffusion


def _check_times(times: Tensor, x: Tensor) -> None:
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must be a 1-D tensor of >= 2 grid points, got shape {tuple(times.shape)}")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must decrease strictly (sampling runs from t~1 noise to t=0 data)")
    if x.ndim < 1:
        raise ValueError(f"x must have a batch dimension (N, *S), got shape {tuple(x.shape)}")


def _flowgrpo(x, times, velocity, noise_level, generator, counter, callback, return_trajectory,
              noisy_steps, noise_fn, sigma_max) -> FlowSample:
    noisy = set(range(len(times) - 1)) if noisy_steps is None else {int(k) for k in noisy_steps}
    f, stds = _counted(velocity, counter, x), []

    def step(state: Tensor, t0: Tensor, t1: Tensor, last: bool) -> Tensor:
        k, t, dt = len(stds), float(t0), float(t1 - t0)
        v = f(state, torch.full((state.shape[0],), t, device=state.device, dtype=state.dtype))
        if k in noisy and noise_level > 0.0 and t > 0.0:
            mean, std = flow_sde_step(state, v, t, dt, noise_level, sigma_max)
            z = noise_fn(k) if noise_fn is not None else torch.randn(state.shape, generator=generator, device=state.device)
            stds.append(std)
            return mean + std * z.to(dtype=state.dtype, device=state.device)
        stds.append(0.0)
        return state + v * dt

    out, traj = _run(step, x, times, callback, return_trajectory)
    return FlowSample(out, times, len(stds), traj, torch.tensor(stds, dtype=x.dtype), noise_level)


def flow_sample(
    x: Tensor,
    times: Tensor,
    *,
    velocity: Velocity,
    solver: str = "euler",
    sde_noise: str = "linear",
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
    counter: EvalCounter | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    return_trajectory: bool = False,
    noisy_steps: Sequence[int] | None = None,
    noise_fn: Callable[[int], Tensor] | None = None,
    sigma_max: float | None = None,
) -> FlowSample:
    """Integrate the flow from x (N, *S) at times[0] along ``times`` (decreasing to ~0).

    ``solver``: ``euler`` / ``heun`` (the ODE dx = v dt) or ``sde`` with ``sde_noise`` ``linear`` or
    ``flowgrpo`` at level ``noise_level`` (module docstring). FlowGRPO options: ``noisy_steps``
    restricts the stochastic steps to these indices (the others are Euler ODE steps with std 0, as in
    FlowGRPO-Fast / MixGRPO); ``noise_fn(k) -> (N, *S)`` supplies step k's standard normal noise
    instead of ``torch.randn(generator=generator)``; ``sigma_max``: see :func:`sde_std`. ``nfe`` counts
    velocity calls (Heun: 2 per step, except a final step to t = 0); ``counter`` is charged per call.
    """
    _check_times(times, x)
    if solver not in SOLVERS or sde_noise not in SDE_NOISES:
        raise ValueError(f"flow_sample: solver {solver!r} / sde_noise {sde_noise!r}; choose {SOLVERS} / {SDE_NOISES}")
    opts = dict(counter=counter, callback=callback, return_trajectory=return_trajectory)
    if solver == "sde" and sde_noise == "flowgrpo":
        return _flowgrpo(x, times, velocity, noise_level, generator, counter, callback, return_trajectory,
                         noisy_steps, noise_fn, sigma_max)
    if solver == "sde":
        drift, diffusion = linear_sde(velocity, noise_level)
        res = euler_maruyama(x, times, drift=drift, diffusion=diffusion, generator=generator, **opts)
    else:
        res = (ode_euler if solver == "euler" else ode_heun)(x, times, drift=velocity, **opts)
    stds = None if solver == "sde" else torch.zeros(len(times) - 1, dtype=x.dtype)  # ODE: deterministic steps
    return FlowSample(res.x, res.times, res.nfe, res.trajectory, stds, None)
