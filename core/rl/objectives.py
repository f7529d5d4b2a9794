"""RL fine-tuning of rectified-flow models: likelihood estimators and policy objectives (docs/methods/rl_elbo.md).

Paper: Choi et al., arXiv 2602.04663 (ELBO likelihood for diffusion RL), with FlowGRPO (per-step
likelihood of an SDE sampler) and DiffusionNFT (forward-process objective) as the baselines.

Rollouts are ``core.diffusion.flow.flow_sample`` (the suite's one flow sampler; FlowGRPO's SDE is its
``sde_noise="flowgrpo"``), returning a ``FlowSample``; the per-step likelihood lives in
``core.rl.likelihood``. Both are re-exported here, so the whole API is ``from core.rl.objectives import ...``:

* rollouts: ``FlowSample``, ``flow_sample``, ``flow_sde_step``, ``sde_std``;
* likelihoods: ``per_step_logprob`` / ``per_step_kl`` (need an SDE rollout), ``elbo_draws`` + ``elbo``
  (from the final sample only; any sampler);
* objectives: ``group_advantages``, ``epg_loss``, ``ppo_clip_loss``, ``nft_reward_prob``, ``nft_loss``.

Path convention: x_t = (1 - t) x0 + t eps (t = 0 data), u = eps - x0 the velocity target.

ELBO weighting (derivation). With alpha = 1 - t, sigma = t the log-SNR is lambda(t) = 2 log((1-t)/t),
so -dlambda/dt = 2 / (t (1 - t)). The eps-prediction implied by a velocity is
eps_hat = x_t + (1 - t) v, hence eps - eps_hat = (1 - t)(u - v). The continuous-time ELBO (Kingma et
al. 2021, VDM eq. 17) is -log p(x0) <= 1/2 int_0^1 (-dlambda/dt) |eps - eps_hat|^2 dt + const, i.e.

    log p(x0) >= -1/2 int_0^1 w(t) |v(x_t, t) - u|^2 dt + C,   w(t) = 2 (1 - t) / t,

with C independent of the model (it diverges without truncation; it cancels in a log-ratio). When v
is the exact velocity of some density q the bound is tight: it equals log q(x0) + C up to the
truncation of [0, 1] to t_range (Kong et al. 2023's I-MMSE identity); tests/core/test_rl.py checks
this on Gaussians. ``weighting="uniform"`` (w = 1) is the flow-matching loss, a surrogate of
arbitrary scale, not a likelihood.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.diffusion.flow import FlowSample, Velocity, flow_sample, flow_sde_step, sde_std
from core.rl.likelihood import per_step_kl, per_step_logprob
from core.utils.nfe import EvalCounter

__all__ = [
    "FlowSample",
    "Velocity",
    "elbo",
    "elbo_draws",
    "elbo_weight",
    "epg_loss",
    "flow_sample",
    "flow_sde_step",
    "group_advantages",
    "inverse_proposal_density",
    "nft_loss",
    "nft_reward_prob",
    "per_step_kl",
    "per_step_logprob",
    "ppo_clip_loss",
    "sde_std",
]

WEIGHTINGS = ("uniform", "elbo")
PROPOSALS = ("uniform", "loguniform")


def elbo_draws(
    n: int,
    shape: tuple[int, ...],
    mc: int,
    generator: torch.Generator | None = None,
    t_range: tuple[float, float] = (0.02, 0.98),
    device: torch.device | str | None = None,
    *,
    stratified: bool = False,
    proposal: str = "uniform",
    antithetic: bool = False,
) -> tuple[Tensor, Tensor]:
    """The (t, eps) draws of the ELBO's Monte-Carlo estimate, to be SHARED by the new and old policy.

    Returns t (mc, n) in t_range and eps (mc, n, *shape) ~ N(0, I). Keyword options (variance
    reduction; pass the same ``proposal`` and ``t_range`` to ``elbo`` so it reweights by 1/q(t)):
    ``proposal`` "uniform" (t ~ U(t_range)) or "loguniform" (q(t) = 1 / (t log(t_max/t_min)), which
    cancels the 1/t of the "elbo" weight); ``stratified``: draw m of every example lies in the m-th
    of mc equal-probability strata of the proposal; ``antithetic``: eps[mc//2 + j] = -eps[j]
    (mc must be even).
    """
    lo, hi = float(t_range[0]), float(t_range[1])
    if not 0.0 < lo < hi <= 1.0:
        raise ValueError(f"t_range must satisfy 0 < t_min < t_max <= 1, got {t_range}")
    if mc < 1 or n < 1:
        raise ValueError(f"elbo_draws needs mc >= 1 and n >= 1, got mc={mc}, n={n}")
    if proposal not in PROPOSALS:
        raise ValueError(f"unknown t proposal {proposal!r}; choose one of {PROPOSALS}")
    if antithetic and mc % 2:
        raise ValueError(f"antithetic draws pair eps with -eps: mc must be even, got {mc}")
    u = torch.rand((mc, n), generator=generator, device=device)
    if stratified:
        u = (torch.arange(mc, device=u.device, dtype=u.dtype)[:, None] + u) / mc
    t = lo + (hi - lo) * u if proposal == "uniform" else lo * (hi / lo) ** u
    eps = torch.randn((mc // 2 if antithetic else mc, n, *shape), generator=generator, device=device)
    if antithetic:
        eps = torch.cat([eps, -eps])
    return t, eps


def inverse_proposal_density(t: Tensor, t_range: tuple[float, float] | None, proposal: str = "uniform") -> Tensor:
    """1/q(t) of the draws' proposal: t_max - t_min (uniform), t log(t_max/t_min) (loguniform); 1 without t_range."""
    if proposal not in PROPOSALS:
        raise ValueError(f"unknown t proposal {proposal!r}; choose one of {PROPOSALS}")
    if t_range is None:
        if proposal != "uniform":
            raise ValueError(f"proposal={proposal!r} needs the draws' t_range to weight by 1/q(t)")
        return torch.ones_like(t)
    lo, hi = float(t_range[0]), float(t_range[1])
    if proposal == "uniform":
        return torch.full_like(t, hi - lo)
    return t * math.log(hi / lo)


def elbo_weight(t: Tensor, weighting: str) -> Tensor:
    """w(t): 1 ("uniform", flow matching) or 2 (1 - t) / t ("elbo" = -dlambda/dt (1-t)^2, see module doc)."""
    if weighting == "uniform":
        return torch.ones_like(t)
    if weighting == "elbo":
        return 2.0 * (1.0 - t) / t
    raise ValueError(f"unknown ELBO weighting {weighting!r}; choose one of {WEIGHTINGS}")


def elbo(
    velocity: Velocity,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    weighting: str = "uniform",
    counter: EvalCounter | None = None,
    *,
    t_range: tuple[float, float] | None = None,
    proposal: str = "uniform",
) -> Tensor:
    """(N,) Monte-Carlo ELBO of x0 (N, *S) under ``velocity``, up to a model-independent constant.

    elbo = -1/2 * mean_m scale_m w(t_m) |v(x_t, t_m) - (eps_m - x0)|^2, the square summed over the
    non-batch dims, x_t = (1 - t_m) x0 + t_m eps_m; t (mc, N) and eps (mc, N, *S) from elbo_draws.
    scale_m = 1/q(t_m), the inverse density of the draws' proposal on ``t_range`` (t_max - t_min for
    "uniform"), so that with weighting="elbo" the value estimates -1/2 int_{t_min}^{t_max} w(t) E|v - u|^2 dt,
    the ELBO's diffusion term (module doc), on the scale of log p; scale = 1 (a plain mean) when
    t_range is None (uniform proposal only). One velocity call (N rows) per draw m.
    The log-ratio estimate is elbo(new) - elbo(old) with the SAME (t, eps); it is differentiable in
    ``velocity``'s parameters.
    """
    if t.ndim != 2 or t.shape[1] != x0.shape[0]:
        raise ValueError(f"t must be (mc, N) with N = x0.shape[0] = {x0.shape[0]}, got {tuple(t.shape)}")
    if tuple(eps.shape) != (t.shape[0], *x0.shape):
        raise ValueError(f"eps must be (mc, *x0.shape) = {(t.shape[0], *x0.shape)}, got {tuple(eps.shape)}")
    weights = elbo_weight(t, weighting) * inverse_proposal_density(t, t_range, proposal)
    dims = tuple(range(1, x0.ndim))
    total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    for m in range(t.shape[0]):
        tm = t[m].to(dtype=x0.dtype)
        tb = tm.reshape(-1, *([1] * (x0.ndim - 1)))
        x_t = (1.0 - tb) * x0 + tb * eps[m]
        if counter is not None:
            counter.add(1, x0.shape[0])
        err = velocity(x_t, tm) - (eps[m] - x0)
        sq = (err**2).sum(dim=dims) if dims else err**2
        total = total + weights[m] * sq
    return -0.5 * total / t.shape[0]


def group_advantages(rewards: Tensor, clip: float | None = 5.0, eps: float = 1e-4) -> Tensor:
    """GRPO advantages (B, G): rewards (B prompts x G images) standardised within each row, clipped.

    A = (r - mean_g r) / (std_g r + eps) with the population std (ddof 0, as FlowGRPO's np.std);
    clipped to [-clip, clip] unless clip is None. A group of equal rewards gives A = 0.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (B prompts, G images per prompt), got shape {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    adv = (rewards - mean) / (std + eps)
    return adv if clip is None else adv.clamp(-clip, clip)


def _check_pair(logratio: Tensor, adv: Tensor) -> None:
    if logratio.shape != adv.shape:
        raise ValueError(f"logratio {tuple(logratio.shape)} and adv {tuple(adv.shape)} must have one shape")


def epg_loss(logratio: Tensor, adv: Tensor) -> Tensor:
    """"Exact policy gradient" loss -mean(sg(rho) A log rho), rho = exp(logratio) = pi_theta / pi_old.

    Its gradient is -mean(A grad rho) (rho grad log rho = grad rho): the unclipped importance-
    weighted REINFORCE gradient. logratio, adv: (N,); returns a scalar.
    """
    _check_pair(logratio, adv)
    return -(torch.exp(logratio).detach() * adv * logratio).mean()


def ppo_clip_loss(logratio: Tensor, adv: Tensor, clip_range: float) -> Tensor:
    """GRPO / PPO clipped surrogate -mean(min(rho A, clip(rho, 1-c, 1+c) A)); logratio, adv (N,)."""
    _check_pair(logratio, adv)
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    rho = torch.exp(logratio)
    return -torch.minimum(rho * adv, rho.clamp(1.0 - clip_range, 1.0 + clip_range) * adv).mean()


def nft_reward_prob(adv: Tensor) -> Tensor:
    """DiffusionNFT's optimality probability r = clamp(A / 10 + 0.5, 0, 1) (A clipped at +-5 maps to [0, 1])."""
    return (adv / 10.0 + 0.5).clamp(0.0, 1.0)


def nft_loss(
    v_theta: Tensor,
    v_old: Tensor,
    x_t: Tensor,
    x0: Tensor,
    t: Tensor,
    reward_prob: Tensor,
    beta: float,
    *,
    scale: float = 1.0,
) -> Tensor:
    """DiffusionNFT's forward-process loss (docs/methods/rl_elbo.md), a scalar.

    v+ = beta v_theta + (1 - beta) v_old,  v- = (1 + beta) v_old - beta v_theta  (v_old detached),
    x0+- = x_t - t v+-,  loss = scale * mean_n [ r |x0+ - x0|^2 / w+ + (1 - r) |x0- - x0|^2 / w- ],
    |.|^2 averaged over the non-batch dims, w+- = mean |x0+- - x0| detached (clamped at 1e-5).
    Shapes: v_theta, v_old, x_t, x0 (N, *S); t, reward_prob (N,). DiffusionNFT's code multiplies
    by adv_clip_max / beta (scale = 5 / beta), which keeps the gradient at v_theta = v_old
    independent of beta; the default scale = 1 is the form of docs/methods/rl_elbo.md.
    """
    if beta <= 0:
        raise ValueError(f"nft beta must be > 0, got {beta}")
    if not (v_theta.shape == v_old.shape == x_t.shape == x0.shape):
        raise ValueError("v_theta, v_old, x_t and x0 must share one shape (N, *S)")
    if t.shape != (x0.shape[0],) or reward_prob.shape != (x0.shape[0],):
        got = f"{tuple(t.shape)}, {tuple(reward_prob.shape)}"
        raise ValueError(f"t and reward_prob must be ({x0.shape[0]},), got {got}")
    v_old = v_old.detach()
    tb = t.reshape(-1, *([1] * (x0.ndim - 1))).to(dtype=x0.dtype)
    dims = tuple(range(1, x0.ndim))
    x0_pos = x_t - tb * (beta * v_theta + (1.0 - beta) * v_old)
    x0_neg = x_t - tb * ((1.0 + beta) * v_old - beta * v_theta)

    def weighted(pred: Tensor) -> Tensor:
        diff = pred - x0
        with torch.no_grad():
            w = diff.abs().mean(dim=dims, keepdim=True).clamp_min(1e-5) if dims else diff.abs().clamp_min(1e-5)
        return (diff**2 / w).mean(dim=dims) if dims else diff**2 / w

    loss = reward_prob * weighted(x0_pos) + (1.0 - reward_prob) * weighted(x0_neg)
    return scale * loss.mean()
