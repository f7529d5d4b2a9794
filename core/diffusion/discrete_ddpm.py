"""Discrete-time Gaussian diffusion (DDPM) with a linear beta schedule and strided (respaced) sampling.

Ho et al. 2020 / Nichol & Dhariwal 2021, the diffusion Stem uses (1000 steps, beta linear from 1e-4
to 0.02). Steps are indexed n = 0..N-1 from data to noise, matching the suite's t = 0 is data:

    q(x_n | x_0) = N(sqrt(abar_n) x_0, (1 - abar_n) I),   abar_n = prod_{i<=n} (1 - beta_i).

The continuous VP process of core/diffusion/processes.py is this chain's N -> infinity limit
(beta(t) = N beta_{tN}); Stem trains on the discrete chain, so it is written out here.

Strided sampling follows improved-DDPM respacing: for a decreasing subset tau_K > ... > tau_1 of
steps, the respaced chain has beta'_k = 1 - abar_{tau_k} / abar_{tau_{k-1}} (abar_{tau_0} = 1), its
posterior q(x_{tau_{k-1}} | x_{tau_k}, x_0) = N(mu~, beta~) with

    mu~ = sqrt(abar_prev) beta' / (1 - abar) x_0 + sqrt(1 - beta') (1 - abar_prev) / (1 - abar) x_n,
    beta~ = beta' (1 - abar_prev) / (1 - abar),

and the network, called with the original step tau_k, predicts eps (x_0 = (x_n - sqrt(1-abar) eps)
/ sqrt(abar)) and optionally v in [-1, 1] that sets log var = (v+1)/2 log beta' + (1-v)/2 log beta~.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from core.utils.nfe import EvalCounter


class LinearBetaDDPM:
    """Linear-beta DDPM schedule; every tensor is float64 (the products of 1000 factors need it)."""

    def __init__(self, n_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        if n_steps < 2 or not 0 < beta_start < beta_end < 1:
            raise ValueError(
                f"need n_steps >= 2 and 0 < beta_start < beta_end < 1, "
                f"got {n_steps}, {beta_start}, {beta_end}"
            )
        self.n_steps = n_steps
        self.betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
        self.alphas_bar = torch.cumprod(1.0 - self.betas, dim=0)

    def q_sample(self, x0: torch.Tensor, n: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps for x0, eps (B, ...) and step indices n (B,)."""
        abar = self.alphas_bar.to(x0.device)[n].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def strided_steps(self, n_sample_steps: int) -> torch.Tensor:
        """``n_sample_steps`` evenly spaced step indices from N-1 down to 0 (int64, decreasing)."""
        if not 1 <= n_sample_steps <= self.n_steps:
            raise ValueError(f"sample steps must be in 1..{self.n_steps}, got {n_sample_steps}")
        return (
            torch.linspace(self.n_steps - 1, 0, n_sample_steps, dtype=torch.float64)
            .round()
            .long()
            .unique_consecutive()
        )

    def respaced(self, steps: torch.Tensor) -> dict[str, torch.Tensor]:
        """beta', abar, abar_prev and beta~ of the respaced chain for decreasing ``steps`` (K,)."""
        abar = self.alphas_bar[steps]
        abar_prev = torch.cat([self.alphas_bar[steps[1:]], torch.ones(1, dtype=torch.float64)])
        beta = 1 - abar / abar_prev
        beta_tilde = beta * (1 - abar_prev) / (1 - abar)
        return {"beta": beta, "abar": abar, "abar_prev": abar_prev, "beta_tilde": beta_tilde}

    @staticmethod
    def posterior(
        x0: torch.Tensor, xn: torch.Tensor, coef: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) of q(x_prev | x_n, x0) for one respaced step (``coef`` entries are scalars)."""
        beta, abar, abar_prev = float(coef["beta"]), float(coef["abar"]), float(coef["abar_prev"])
        mean = (
            math.sqrt(abar_prev) * beta / (1 - abar) * x0
            + math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar) * xn
        )
        return mean, torch.full_like(xn, float(coef["beta_tilde"]))

    @staticmethod
    def log_variance(
        v: torch.Tensor | None, coef: dict[str, torch.Tensor], first_tilde: float
    ) -> torch.Tensor | float:
        """log var of p(x_prev | x_n): beta~ (fixed small) when v is None, else the learned interpolation.

        beta~ of the last step is 0, so, as in improved DDPM, its log uses ``first_tilde`` (beta~ of
        the step above)."""
        log_small = math.log(max(float(coef["beta_tilde"]), first_tilde))
        if v is None:
            return log_small
        frac = (v.clamp(-1, 1) + 1) / 2
        return frac * math.log(float(coef["beta"])) + (1 - frac) * log_small


def x0_from_eps(xn: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
    return (xn - math.sqrt(1 - abar) * eps) / math.sqrt(abar)


def normal_kl(mean1: torch.Tensor, logvar1, mean2: torch.Tensor, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    logvar1, logvar2 = (
        torch.as_tensor(logvar1, dtype=mean1.dtype),
        torch.as_tensor(logvar2, dtype=mean1.dtype),
    )
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1
    )


def vlb_term(
    schedule: LinearBetaDDPM,
    x0: torch.Tensor,
    xn: torch.Tensor,
    n: torch.Tensor,
    eps_pred: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """Per-example variational bound term L_n (nats per dimension) for training the variance head.

    L_n = KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)) for n > 0 and -log p(x0 | x_1) (Gaussian
    density; expression values are continuous) for n = 0. The mean uses ``eps_pred`` as given:
    the caller detaches it so this term trains only the variance (improved DDPM's hybrid loss).
    x0, xn, eps_pred, v: (B, G); n: (B,).
    """
    abar = schedule.alphas_bar.to(x0.device)[n].to(x0.dtype)[:, None]
    abar_prev = torch.where(
        n > 0,
        schedule.alphas_bar.to(x0.device)[(n - 1).clamp_min(0)],
        torch.ones_like(n, dtype=torch.float64),
    )
    abar_prev = abar_prev.to(x0.dtype)[:, None]
    beta = 1 - abar / abar_prev
    beta_tilde = beta * (1 - abar_prev) / (1 - abar)
    coef_x0, coef_xn = abar_prev.sqrt() * beta / (1 - abar), (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
    true_mean = coef_x0 * x0 + coef_xn * xn
    x0_pred = (xn - (1 - abar).sqrt() * eps_pred) / abar.sqrt()
    model_mean = coef_x0 * x0_pred + coef_xn * xn
    floor = float(schedule.betas[1] * (1 - schedule.alphas_bar[0]) / (1 - schedule.alphas_bar[1]))
    log_small = torch.log(beta_tilde.clamp_min(floor))
    frac = (v.clamp(-1, 1) + 1) / 2
    model_logvar = frac * torch.log(beta) + (1 - frac) * log_small
    kl = normal_kl(true_mean, log_small, model_mean, model_logvar).mean(-1)
    nll = (0.5 * (math.log(2 * math.pi) + model_logvar + (x0 - model_mean) ** 2 / model_logvar.exp())).mean(
        -1
    )
    return torch.where(n == 0, nll, kl)


@torch.no_grad()
def strided_ancestral_sample(
    net: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    schedule: LinearBetaDDPM,
    shape: tuple[int, ...],
    n_sample_steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    counter: EvalCounter | None = None,
) -> torch.Tensor:
    """Ancestral sampling of the respaced chain from x_{N-1} ~ N(0, I) down to x_0.

    ``net(x_n (B, ...), n (B,) original step indices) -> (eps, v or None)``; each call is charged
    to ``counter``. Returns x_0 of ``shape``.
    """
    steps = schedule.strided_steps(n_sample_steps)
    coefs = schedule.respaced(steps)
    first_tilde = float(coefs["beta_tilde"][-2]) if len(steps) > 1 else float(coefs["beta"][-1])
    x = torch.randn(shape, generator=generator, device=device)
    for k, n in enumerate(steps.tolist()):
        coef = {key: value[k] for key, value in coefs.items()}
        eps, v = net(x, torch.full((shape[0],), n, dtype=torch.long, device=x.device))
        if counter is not None:
            counter.add(1, shape[0])
        x0 = x0_from_eps(x, eps, float(coef["abar"]))
        mean, _ = schedule.posterior(x0, x, coef)
        if k == len(steps) - 1:
            return mean  # the last step returns the posterior mean, without noise
        log_var = schedule.log_variance(v, coef, first_tilde)
        noise = torch.randn(shape, generator=generator, device=x.device)
        x = mean + (torch.as_tensor(log_var, device=x.device) / 2).exp() * noise
    return x
