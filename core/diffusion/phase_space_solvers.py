"""Samplers for the linear phase-space processes of core/diffusion/phase_space.py (VP, VSDM, CLD, VSMD).

Same signature style as core/diffusion/solvers.py::

    sampler(u, times, *, process, score, generator=None, callback=None, counter=None,
            return_trajectory=False) -> SampleResult

* ``u``: state at ``times[0]`` (a tensor (N, d) for order 1, a tuple (x, v) for order 2), in the
  original basis; ``times``: decreasing grid T -> t_min;
* ``score(u, t) -> (N, d)``: the score of the noised component (x for order 1, v for order 2),
  i.e. grad_x log p_t or the velocity score grad_v log p_t; ``t`` is a (N,) tensor;
* ``counter`` (core.utils.nfe.EvalCounter) is charged once per score evaluation.

Integrators run in D's eigenbasis, where every direction is an independent 1-D or 2-D linear
system (module docstring of core/diffusion/phase_space.py), and return states in the original basis.

* :func:`phase_space_em` — Euler-Maruyama on the reverse SDE du = beta [F u - Q0 s] dt + sqrt(beta Q0) dW.
* :func:`phase_space_heun` — Heun on the probability-flow ODE du/dt = beta [F u - Q0 s / 2].
* :func:`splitting_sampler` — symmetric splitting (Dockhorn et al. 2022's SSCS, generalised):
  write s = -Sigma_inf^{-1} u + s~; the linear part (reverse OU for the SDE, a pure rotation
  x' = -v/M, v' = lam x for the ODE of an order-2 process) is solved exactly by a matrix
  exponential over half steps, and the s~ "kick" is an Euler step in between:
  L(h/2) K(h) L(h/2), one score evaluation per step. The ODE version is a Strang splitting
  (a leapfrog-like symplectic scheme for the rotation + kick).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from core.utils.nfe import EvalCounter
from core.diffusion.phase_space import PhaseSpaceProcess, _chol
from core.diffusion.solvers import SampleResult, euler_maruyama, ode_heun, time_grid

Score = Callable[[Any, torch.Tensor], torch.Tensor]


class _Basis:
    """Rotations between the original basis and D's eigenbasis for tuple/tensor states."""

    def __init__(self, process: PhaseSpaceProcess) -> None:
        self.order = process.order
        self.lam, self.U = process.eig()

    def parts(self, u: Any) -> list[torch.Tensor]:
        return [u] if self.order == 1 else list(u)

    def pack(self, parts: list[torch.Tensor]) -> Any:
        return parts[0] if self.order == 1 else tuple(parts)

    def to_eig(self, u: Any) -> Any:
        return self.pack([p if self.U is None else p @ self.U.to(p.dtype) for p in self.parts(u)])

    def from_eig(self, u: Any) -> Any:
        return self.pack([p if self.U is None else p @ self.U.T.to(p.dtype) for p in self.parts(u)])


def _check_state(process: PhaseSpaceProcess, u: Any) -> None:
    if process.order == 2 and not (isinstance(u, (tuple, list)) and len(u) == 2):
        raise ValueError("an order-2 (phase-space) process needs a state tuple (x, v)")
    if process.order == 1 and not isinstance(u, torch.Tensor):
        raise ValueError("an order-1 process needs a tensor state (N, d)")


def _eig_drift(process: PhaseSpaceProcess, score: Score, basis: _Basis, ode: bool):
    """Reverse-time drift in the eigenbasis: beta(t) [F z - c Q0 s_eig], c = 1 (SDE) or 1/2 (ODE)."""
    F, Q0 = process.blocks(basis.lam, "forward")
    c = 0.5 if ode else 1.0

    def drift(z: Any, t: torch.Tensor) -> Any:
        parts = basis.parts(z)
        dtype = parts[0].dtype
        beta = process.beta(t).to(dtype).unsqueeze(1)
        s = score(basis.from_eig(z), t)
        s_eig = s if basis.U is None else s @ basis.U.to(dtype)
        out = []
        for i in range(process.order):
            d = sum(F[:, i, j].to(dtype) * parts[j] for j in range(process.order))
            if i == process.order - 1:
                d = d - c * Q0[:, i, i].to(dtype) * s_eig
            out.append(beta * d)
        return basis.pack(out)

    def diffusion(t: torch.Tensor) -> Any:
        g = torch.sqrt(process.beta(t).reshape(()) * Q0[:, -1, -1]).to(torch.float32)
        return g if process.order == 1 else (torch.zeros(()), g)

    return drift, diffusion


def _finish(basis: _Basis, res: SampleResult) -> SampleResult:
    res.x = basis.from_eig(res.x)
    if res.trajectory is not None:
        res.trajectory = [basis.from_eig(s) for s in res.trajectory]
    return res


def phase_space_em(
    u: Any,
    times: torch.Tensor,
    *,
    process: PhaseSpaceProcess,
    score: Score,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, Any], None] | None = None,
    counter: EvalCounter | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Euler-Maruyama on the reverse SDE (one score evaluation per step; no noise on the last step)."""
    _check_state(process, u)
    basis = _Basis(process)
    drift, diffusion = _eig_drift(process, score, basis, ode=False)
    res = euler_maruyama(
        basis.to_eig(u), times, drift=drift, diffusion=diffusion, generator=generator,
        callback=callback, counter=counter, return_trajectory=return_trajectory,
    )
    return _finish(basis, res)


def phase_space_heun(
    u: Any,
    times: torch.Tensor,
    *,
    process: PhaseSpaceProcess,
    score: Score,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, Any], None] | None = None,
    counter: EvalCounter | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Heun on the probability-flow ODE (two score evaluations per step)."""
    _check_state(process, u)
    basis = _Basis(process)
    drift, _ = _eig_drift(process, score, basis, ode=True)
    res = ode_heun(
        basis.to_eig(u), times, drift=drift, callback=callback, counter=counter,
        return_trajectory=return_trajectory,
    )
    return _finish(basis, res)


def splitting_sampler(
    u: Any,
    times: torch.Tensor,
    *,
    process: PhaseSpaceProcess,
    score: Score,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, Any], None] | None = None,
    counter: EvalCounter | None = None,
    return_trajectory: bool = False,
    stochastic: bool = True,
) -> SampleResult:
    """Symmetric splitting L(h/2) K(h) L(h/2) on the reverse SDE (``stochastic``) or the PF-ODE.

    With s = -Sigma_inf^{-1} u + s~ the exact linear flow L uses Phi = expm(dB F_r),
    Q = Sigma_inf - Phi Sigma_inf Phi^T (``blocks(kind='reverse_split' | 'reverse_ode')``) and the
    kick is z_last += c Q0 dB s~ (c = 1 for the SDE, 1/2 for the ODE), dB = B(t0) - B(t1)."""
    _check_state(process, u)
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times must be a 1-D grid with >= 2 points, got shape {tuple(times.shape)}")
    basis = _Basis(process)
    lam, k = basis.lam, process.order
    kind = "reverse_split" if stochastic else "reverse_ode"
    _, Q0 = process.blocks(lam, "forward")
    sig_inf_last = process.stationary_cov(lam)[:, -1, -1]
    c = 1.0 if stochastic else 0.5
    z = torch.stack(basis.parts(basis.to_eig(u)), -1)  # (N, d, k)
    dtype, N = z.dtype, z.shape[0]

    def linear(z: torch.Tensor, dB: torch.Tensor) -> torch.Tensor:
        Phi, Q = process.transition(dB.reshape(1), lam, kind)
        out = torch.einsum("dij,ndj->ndi", Phi[0].to(dtype), z)
        if stochastic:
            xi = torch.randn(z.shape, generator=generator, dtype=dtype)
            out = out + torch.einsum("dij,ndj->ndi", _chol(Q[0]).to(dtype), xi)
        return out

    def as_state(z: torch.Tensor) -> Any:
        return basis.from_eig(basis.pack([z[..., i] for i in range(k)]))

    traj = [as_state(z)] if return_trajectory else None
    for i in range(len(times) - 1):
        t0, t1 = times[i], times[i + 1]
        tm = 0.5 * (t0 + t1)
        B0, Bm, B1 = (process.integrated_beta(t) for t in (t0, tm, t1))
        z = linear(z, B0 - Bm)
        if counter is not None:
            counter.add(1, N)
        s = score(as_state(z), tm.to(dtype).expand(N))
        s_eig = s if basis.U is None else s @ basis.U.to(dtype)
        s_tilde = s_eig + z[..., -1] / sig_inf_last.to(dtype)
        z = z.clone()
        z[..., -1] = z[..., -1] + c * (Q0[:, -1, -1] * (B0 - B1)).to(dtype) * s_tilde
        z = linear(z, Bm - B1)
        if callback is not None:
            callback(i, t1, as_state(z))
        if traj is not None:
            traj.append(as_state(z))
    return SampleResult(x=as_state(z), times=times, nfe=len(times) - 1, trajectory=traj)


def steps_for_nfe(method: str, nfe: int) -> int:
    """Grid steps that spend exactly ``nfe`` score evaluations (Heun: 2 per step)."""
    if method in ("em", "split", "split_ode"):
        return nfe
    if method == "heun":
        if nfe % 2:
            raise ValueError(f"Heun spends 2 evaluations per step; nfe must be even, got {nfe}")
        return nfe // 2
    raise ValueError(f"unknown method {method!r}; choose em, heun, split or split_ode")


def sample_phase_space(
    process: PhaseSpaceProcess,
    score: Score,
    n: int,
    dim: int,
    steps: int,
    method: str = "split",
    grid: str = "uniform",
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> SampleResult:
    """Prior draw at T, then integrate to t_min with ``method`` (em | heun | split | split_ode)
    on a ``grid`` (uniform | quadratic) of ``steps`` steps (steps_for_nfe gives the steps of an
    evaluation budget)."""
    times = time_grid(process.T, process.t_min, steps, grid)
    u = process.prior_sample(n, dim, generator)
    if method == "em":
        return phase_space_em(u, times, process=process, score=score, generator=generator, **kwargs)
    if method == "heun":
        return phase_space_heun(u, times, process=process, score=score, generator=generator, **kwargs)
    return splitting_sampler(
        u, times, process=process, score=score, generator=generator, stochastic=(method == "split"), **kwargs
    )


def data_part(state: Any) -> torch.Tensor:
    """The data-space component x of a state (the state itself for order 1)."""
    return state[0] if isinstance(state, (tuple, list)) else state

