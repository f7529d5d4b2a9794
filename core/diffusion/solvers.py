"""Samplers for reverse-time SDEs and probability-flow ODEs, on tensor or tuple states.

All samplers share one signature::

    sampler(x, times, *, drift, diffusion=None, generator=None, callback=None,
            counter=None, return_trajectory=False) -> SampleResult

* ``x``: initial state at ``times[0]`` (a tensor (B, ...) or a tuple of such tensors);
* ``times``: 1-D tensor, the integration grid (decreasing for generation: T -> t_min);
* ``drift(x, t) -> dx/dt`` with the same structure as ``x``; ``t`` is a (B,) tensor;
* ``diffusion(t) -> g`` (a float/tensor, or a tuple matching the state) for SDE samplers;
* ``callback(step, t, x)`` is called after every step;
* ``counter`` (core.utils.nfe.EvalCounter) is charged once per drift evaluation.

For a scalar process, :func:`reverse_sde` and :func:`probability_flow` build ``drift`` and
``diffusion`` from a score function: reverse SDE dx = [f x - g^2 s(x,t)] dt + g dW (dt < 0) and
probability-flow ODE dx/dt = f x - g^2 s(x,t) / 2 (Song et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from core.utils.nfe import EvalCounter
from core.diffusion.processes import ScalarProcess, _bcast
from core.utils.tree import tree_clone, tree_leading_dim, tree_map, tree_randn_like

Drift = Callable[[Any, torch.Tensor], Any]


@dataclass
class SampleResult:
    """``x``: final state; ``trajectory``: states at every grid time (len(times)) when asked;
    ``times``: the grid; ``nfe``: drift evaluations spent by this call."""

    x: Any
    times: torch.Tensor
    nfe: int
    trajectory: list[Any] | None = field(default=None, repr=False)


def time_grid(
    t_start: float,
    t_end: float,
    steps: int,
    kind: str = "uniform",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``steps + 1`` times from t_start to t_end: ``uniform``, ``geometric`` (log-spaced; t_end > 0),
    or ``quadratic`` (dense near t_end); built in ``dtype`` (default float32) on ``device``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    opts = dict(dtype=dtype, device=device)
    if kind == "uniform":
        return torch.linspace(t_start, t_end, steps + 1, **opts)
    if kind == "geometric":
        return torch.exp(torch.linspace(math.log(t_start), math.log(t_end), steps + 1, **opts))
    if kind == "quadratic":
        s = torch.linspace(0.0, 1.0, steps + 1, **opts)
        return t_end + (t_start - t_end) * (1 - s) ** 2
    raise ValueError(f"unknown time grid {kind!r}; choose uniform, geometric or quadratic")


def _check_grid(times: torch.Tensor) -> None:
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times must be a 1-D grid with >= 2 points, got shape {tuple(times.shape)}")


def _counted(drift: Drift, counter: EvalCounter | None, x: Any) -> Callable[[Any, torch.Tensor], Any]:
    rows = tree_leading_dim(x)

    def f(state: Any, t: torch.Tensor) -> Any:
        if counter is not None:
            counter.add(1, rows)
        return drift(state, t)

    return f


def _tvec(t: torch.Tensor, x: Any) -> torch.Tensor:
    lead = x[0] if isinstance(x, (tuple, list)) else x
    return t.to(lead.device, lead.dtype).expand(tree_leading_dim(x))


def _run(step_fn, x, times, callback, return_trajectory):
    """Apply ``step_fn(x, t0, t1, last)`` along the grid, with the callback and the trajectory."""
    traj = [tree_clone(x)] if return_trajectory else None
    for i in range(len(times) - 1):
        x = step_fn(x, times[i], times[i + 1], i == len(times) - 2)
        if callback is not None:
            callback(i, times[i + 1], x)
        if traj is not None:
            traj.append(tree_clone(x))
    return x, traj


def euler_maruyama(
    x: Any,
    times: torch.Tensor,
    *,
    drift: Drift,
    diffusion: Callable[[torch.Tensor], Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, Any], None] | None = None,
    counter: EvalCounter | None = None,
    return_trajectory: bool = False,
    final_noise: bool = False,
) -> SampleResult:
    """x' = x + drift(x, t) dt + g(t) sqrt(|dt|) z. The last step adds no noise unless ``final_noise``
    (the usual "denoise at the end" convention)."""
    if diffusion is None:
        raise ValueError("euler_maruyama needs diffusion(t)")
    _check_grid(times)
    f = _counted(drift, counter, x)
    n_steps = len(times) - 1

    def step(state, t0, t1, last):
        dt = t1 - t0
        d = f(state, _tvec(t0, state))
        g = diffusion(t0)
        mean = tree_map(lambda s, ds: s + ds * dt, state, d)
        if last and not final_noise:
            return mean
        z = tree_randn_like(state, generator)
        if isinstance(state, (tuple, list)):
            gs = g if isinstance(g, (tuple, list)) else (g,) * len(state)
            return tuple(m + gi * torch.sqrt(dt.abs()) * zi for m, gi, zi in zip(mean, gs, z))
        return mean + g * torch.sqrt(dt.abs()) * z

    calls0 = counter.calls if counter is not None else 0
    x, traj = _run(step, x, times, callback, return_trajectory)
    nfe = (counter.calls - calls0) if counter is not None else n_steps
    return SampleResult(x=x, times=times, nfe=nfe, trajectory=traj)


def ode_euler(
    x: Any,
    times: torch.Tensor,
    *,
    drift: Drift,
    diffusion: Callable[[torch.Tensor], Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, Any], None] | None = None,
    counter: EvalCounter | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Explicit Euler on dx/dt = drift(x, t): one evaluation per step."""
    _check_grid(times)
    f = _counted(drift, counter, x)

    def step(state, t0, t1, last):
        return tree_map(lambda s, ds: s + ds * (t1 - t0), state, f(state, _tvec(t0, state)))

    x, traj = _run(step, x, times, callback, return_trajectory)
    return SampleResult(x=x, times=times, nfe=len(times) - 1, trajectory=traj)


def ode_heun(
    x: Any,
    times: torch.Tensor,
    *,
    drift: Drift,
    diffusion: Callable[[torch.Tensor], Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, Any], None] | None = None,
    counter: EvalCounter | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Heun's second-order method (EDM's sampler without churn): two evaluations per step, except
    a final step to t = 0 exactly, which is plain Euler."""
    _check_grid(times)
    f = _counted(drift, counter, x)
    nfe = 0

    def step(state, t0, t1, last):
        nonlocal nfe
        dt = t1 - t0
        d0 = f(state, _tvec(t0, state))
        pred = tree_map(lambda s, ds: s + ds * dt, state, d0)
        nfe += 1
        if float(t1) == 0.0:
            return pred
        d1 = f(pred, _tvec(t1, state))
        nfe += 1
        return tree_map(lambda s, a, b: s + 0.5 * (a + b) * dt, state, d0, d1)

    x, traj = _run(step, x, times, callback, return_trajectory)
    return SampleResult(x=x, times=times, nfe=nfe, trajectory=traj)


SAMPLERS = {"em": euler_maruyama, "euler": ode_euler, "heun": ode_heun}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def reverse_sde(process: ScalarProcess, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """(drift, diffusion) of the reverse SDE dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dW."""

    def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _bcast(process.drift_coef(t), x) * x - _bcast(process.diffusion_sq(t), x) * score(x, t)

    def diffusion(t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(process.diffusion_sq(t).clamp_min(0.0))

    return drift, diffusion


def probability_flow(process: ScalarProcess, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Drift of the probability-flow ODE dx/dt = f(t) x - g(t)^2 s(x, t) / 2."""

    def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _bcast(process.drift_coef(t), x) * x - 0.5 * _bcast(process.diffusion_sq(t), x) * score(x, t)

    return drift


def sample_process(
    process: ScalarProcess,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    steps: int,
    sampler: str = "em",
    grid: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> SampleResult:
    """Generate from a scalar process: prior draw at T, then integrate to t_min with ``sampler``."""
    times = time_grid(process.T, process.t_min, steps, grid)
    x = process.prior_sample(shape, generator=generator).to(device or "cpu")
    if sampler == "em":
        drift, diffusion = reverse_sde(process, score)
        return euler_maruyama(x, times, drift=drift, diffusion=diffusion, generator=generator, **kwargs)
    return get_sampler(sampler)(x, times, drift=probability_flow(process, score), generator=generator, **kwargs)
