"""Conversions between what a network predicts and the score, for scalar processes.

With x_t = a x0 + s eps (a = alpha_t, s = sigma_t), a network may predict

* ``eps``: the noise; score = -eps / s
* ``x0``: the clean data; score = -(x_t - a x0) / s^2
* ``score``: grad log p_t(x_t) directly
* ``velocity``: v = da/dt x0 + ds/dt eps (rectified flow: eps - x0); solving the 2x2 system
  [a, s; a', s'] [x0; eps] = [x_t; v] gives eps = (a v - a' x_t) / (a s' - s a').
"""

from __future__ import annotations

import torch

from core.diffusion.processes import ScalarProcess, _bcast, alpha_sigma_derivatives

TARGETS = ("eps", "x0", "score", "velocity")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown prediction target {target!r}; choose one of {TARGETS}")


def target_of(target: str, process: ScalarProcess, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
    """The regression target for ``target`` given clean data, noise and per-example times (B,)."""
    check_target(target)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "score":
        return -eps / _bcast(process.sigma(t), x0)
    return process.velocity_target(x0, eps, t)


def to_eps(target: str, process: ScalarProcess, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Convert a network output to the implied noise prediction eps_hat."""
    check_target(target)
    a, s = _bcast(process.alpha(t), x_t), _bcast(process.sigma(t), x_t)
    if target == "eps":
        return out
    if target == "x0":
        return (x_t - a * out) / s
    if target == "score":
        return -s * out
    da, ds = alpha_sigma_derivatives(process, t)
    da, ds = _bcast(da, x_t), _bcast(ds, x_t)
    return (a * out - da * x_t) / (a * ds - s * da)


def to_score(target: str, process: ScalarProcess, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Convert a network output to the score grad log p_t(x_t)."""
    if target == "score":
        return out
    return -to_eps(target, process, out, x_t, t) / _bcast(process.sigma(t), x_t)


def to_x0(target: str, process: ScalarProcess, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Convert a network output to the implied clean-data prediction (Tweedie's formula)."""
    if target == "x0":
        return out
    a, s = _bcast(process.alpha(t), x_t), _bcast(process.sigma(t), x_t)
    return (x_t - s * to_eps(target, process, out, x_t, t)) / a
