"""Denoising losses for scalar processes: E_t E_eps w(t) |net(x_t, t) - target|^2.

Weights are named: ``none`` (1), ``snr`` (a^2/s^2, turns eps-MSE into x0-MSE),
``sigma_sq`` (s^2: eps-MSE -> score-matching with the likelihood-style lambda = s^2 on the score),
``inv_sigma_sq`` (1/s^2, the DSM weight 1/h_t of the ridge paper on an x0 loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.diffusion.parametrization import target_of
from core.diffusion.processes import ScalarProcess

WEIGHTS = ("none", "snr", "sigma_sq", "inv_sigma_sq")


def loss_weight(name: str, process: ScalarProcess, t: torch.Tensor) -> torch.Tensor:
    if name == "none":
        return torch.ones_like(t)
    a, s = process.alpha(t), process.sigma(t)
    if name == "snr":
        return a**2 / s**2
    if name == "sigma_sq":
        return s**2
    if name == "inv_sigma_sq":
        return 1.0 / s**2
    raise ValueError(f"unknown loss weight {name!r}; choose one of {WEIGHTS}")


def denoising_error(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    process: ScalarProcess,
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    target: str = "eps",
) -> torch.Tensor:
    """The residual net(x_t, t) - target, shaped like x0, with x_t = a_t x0 + sigma_t eps.

    ``t`` (B,) and ``eps`` (like x0) are given by the caller so that the noise can be keyed per
    example (core.utils.noise) or fixed for a Hessian probe. With ``target="velocity"`` on
    ``LinearPath`` this is the flow-matching residual v(x_t, t) - (eps - x0).
    """
    x_t, _ = process.kernel(t).sample(x0, eps=eps)
    out = net(x_t, t)
    if out.shape != x0.shape:
        raise ValueError(f"network output has shape {tuple(out.shape)}, expected {tuple(x0.shape)}")
    return out - target_of(target, process, x0, eps, t)


def denoising_loss(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    process: ScalarProcess,
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    target: str = "eps",
    weight: str = "none",
) -> torch.Tensor:
    """Per-example loss, shape (B,): w(t) * mean over features of |net(x_t, t) - target|^2
    (:func:`denoising_error` squared and averaged)."""
    err = denoising_error(net, process, x0, t, eps, target).pow(2).flatten(1).mean(1)
    return loss_weight(weight, process, t) * err


def sample_times(u: torch.Tensor, process: ScalarProcess) -> torch.Tensor:
    """Map uniforms in (0, 1) to training times uniform in [t_min, T]."""
    return process.t_min + u * (process.T - process.t_min)
