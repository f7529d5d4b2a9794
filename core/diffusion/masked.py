"""Absorbing ("mask") discrete diffusion: the suite's one implementation, with all its decoders.

Forward process (Austin et al. 2021; Sahoo et al. 2024, MDLM; Shi et al. 2024): every token is
replaced independently by the mask token with probability m(t), t = 0 data, t = 1 noise,

    q(x_t^i | x_0^i) = (1 - m(t)) [x_t^i = x_0^i] + m(t) [x_t^i = MASK].

Schedules (``MaskSchedule``):
* ``loglinear``: m(t) = (1 - eps) t, i.e. s(t) = -log(1 - (1 - eps) t) (Diffuse Everything, SEDD);
* ``linear``: the same with eps = 0;
* ``cosine``: m(t) = sin(pi t / 2), MaskGIT's gamma(r) = cos(pi r / 2) with r = 1 - t.

Loss (continuous-time ELBO of an x0-predicting network): for every masked position,

    L = E_t [ m'(t) / m(t) * sum_{i masked} -log p_theta(x_0^i | x_t) ],

with weight m'/m = s'(t) / (e^{s(t)} - 1), which is exactly 1/t for the log-linear schedule.

Decoders, all calling ``model_fn(tokens (B, L) long, t (B,) or (B, L) float) -> logits (B, L, V)``
and charging every call to a ``core.utils.nfe.EvalCounter``:
* :meth:`MaskedDiffusion.sample` -- ancestral (exact reverse step: a masked token is revealed on
  [s, t] with probability (m(t) - m(s)) / m(t)) or tau-leaping (rate m'(t)/m(t) times the step);
* :func:`confidence_decode` -- LLaDA's semi-autoregressive blocks with top-k or threshold
  (Fast-dLLM) low-confidence remasking and Gumbel token noise, and MaskGIT's cosine count schedule
  with annealed Gumbel noise on the confidences;
* :func:`unmask_step` -- one such step, for search methods (Prism) that drive the steps themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.utils.nfe import EvalCounter
from core.diffusion.solvers import SampleResult

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SCHEDULES = ("loglinear", "linear", "cosine")


class MaskSchedule:
    """Mask probability m(t) on t in [0, 1] and its derivative; ``weight`` = m'(t) / m(t)."""

    def __init__(self, kind: str = "loglinear", eps: float = 1e-3) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown mask schedule {kind!r}; choose one of {SCHEDULES}")
        self.kind = kind
        self.eps = eps if kind == "loglinear" else 0.0

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "cosine":
            return torch.sin(0.5 * math.pi * t)
        return (1.0 - self.eps) * t

    def d_mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "cosine":
            return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)
        return torch.full_like(t, 1.0 - self.eps)

    def log_rate(self, t: torch.Tensor) -> torch.Tensor:
        """s(t) = -log(1 - m(t)), the paper's noise level."""
        return -torch.log1p(-self.mask_prob(t))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """m'(t) / m(t) = s'(t) / (e^{s(t)} - 1); 0 where t = 0 (nothing is masked there)."""
        m = self.mask_prob(t)
        return torch.where(m > 0, self.d_mask_prob(t) / m.clamp_min(1e-12), torch.zeros_like(m))


@dataclass
class MaskKernel:
    """q(x_t | x_0): independent masking with probability ``mask_prob`` (scalar, (B,) or (B, L))."""

    mask_prob: torch.Tensor
    mask_id: int

    def sample(
        self, x0: torch.Tensor, generator: torch.Generator | None = None, u: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t (B, L): x0 with positions where u < m(t) replaced by the mask id; pass ``u`` to fix noise."""
        if u is None:
            u = draw("uniform", x0.shape, generator, x0.device)
        m = _bcast_to(self.mask_prob, x0)
        return torch.where(u < m, torch.full_like(x0, self.mask_id), x0)


def _bcast_to(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Times (), (B,) or (B, L) -> broadcastable against tokens (B, L, ...)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    if t.ndim == 1 and x.ndim > 1:
        t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return t


def draw(kind: str, shape, generator: torch.Generator | None, device=None, dtype=torch.float32) -> torch.Tensor:
    """torch.rand / torch.randn on ``device`` from a generator that may live on another device (a CPU
    generator seeds evaluation on a GPU run): drawn where the generator lives, then moved."""
    fn = torch.rand if kind == "uniform" else torch.randn
    if generator is None:
        return fn(tuple(shape), device=device, dtype=dtype)
    return fn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device) -> torch.Tensor:
    u = draw("uniform", shape, generator, device, torch.float64)
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-16))).float()


def sample_tokens(
    logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gumbel-max draw from softmax(logits / temperature) over the last dim; temperature 0 = argmax.

    LLaDA's ``add_gumbel_noise`` (exp(l) / (-log u)^tau, argmax) is the same draw."""
    if temperature <= 0:
        return logits.argmax(-1)
    return (logits / temperature + gumbel_noise(logits.shape, generator, logits.device)).argmax(-1)


class MaskedDiffusion:
    """Absorbing diffusion over tokens in [0, V) with mask token ``mask_id``.

    ``mask_id`` may equal V (the network outputs V logits and never predicts the mask) or lie inside
    [0, V) (its logit is then ignored when sampling)."""

    def __init__(self, mask_id: int, schedule: str = "loglinear", eps: float = 1e-3) -> None:
        self.mask_id = int(mask_id)
        self.schedule = MaskSchedule(schedule, eps)

    def kernel(self, t: torch.Tensor | float) -> MaskKernel:
        return MaskKernel(self.schedule.mask_prob(torch.as_tensor(t, dtype=torch.float32)), self.mask_id)

    def loss(
        self,
        logits: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-example weighted cross-entropy (B,): mean over positions of w(t) [masked] (-log p(x0)).

        logits (B, L, V), x0 and x_t (B, L), t (B,) or (B, L) per-position times; ``valid`` (B, L)
        bool drops padding. Averaging over all L (not over masked ones) keeps it the ELBO / L."""
        if logits.shape[:2] != x0.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(x0.shape)}")
        nll = F.cross_entropy(logits.transpose(1, 2).float(), x0, reduction="none")  # (B, L)
        w = _bcast_to(self.schedule.weight(torch.as_tensor(t, dtype=torch.float32)), x0).expand_as(nll)
        keep = x_t == self.mask_id
        if valid is not None:
            keep = keep & valid
        return torch.where(keep, w * nll, torch.zeros_like(nll)).mean(1)

    def reveal_prob(self, t: torch.Tensor, s: torch.Tensor, kind: str = "ancestral") -> torch.Tensor:
        """Probability that a token masked at time t is revealed by time s < t.

        ancestral: (m(t) - m(s)) / m(t) (exact); tau_leaping: (t - s) m'(t)/m(t), clipped to [0, 1]."""
        sch = self.schedule
        if kind == "ancestral":
            m_t = sch.mask_prob(t)
            p = (m_t - sch.mask_prob(s)) / m_t.clamp_min(1e-12)
        elif kind == "tau_leaping":
            p = (t - s) * sch.weight(t)
        else:
            raise ValueError(f"unknown reverse step {kind!r}; choose ancestral or tau_leaping")
        p = torch.where(s <= 0, torch.ones_like(p), p)  # the last step reveals everything
        return p.clamp(0.0, 1.0)

    def reverse_step(
        self,
        logits: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor,
        generator: torch.Generator | None = None,
        kind: str = "ancestral",
        temperature: float = 1.0,
        update: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step t -> s of the reverse process; t, s scalars, (B,) or (B, L).

        Each masked position (restricted to ``update`` (B, L) bool when given) is revealed with
        ``reveal_prob`` and then drawn from softmax(logits); revealed tokens never change again."""
        logits = self.exclude_mask(logits)
        p = _bcast_to(self.reveal_prob(torch.as_tensor(t).float(), torch.as_tensor(s).float(), kind), x_t)
        u = draw("uniform", x_t.shape, generator, x_t.device)
        reveal = (x_t == self.mask_id) & (u < p)
        if update is not None:
            reveal = reveal & update
        return torch.where(reveal, sample_tokens(logits, temperature, generator), x_t)

    def exclude_mask(self, logits: torch.Tensor) -> torch.Tensor:
        if self.mask_id < logits.shape[-1]:
            logits = logits.clone()
            logits[..., self.mask_id] = float("-inf")
        return logits

    def sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        counter: EvalCounter | None = None,
        kind: str = "ancestral",
        temperature: float = 1.0,
        return_trajectory: bool = False,
    ) -> SampleResult:
        """Reverse the process from t = 1 to 0 on a uniform grid of ``steps`` steps.

        x (B, L): start tokens; masked positions are generated, the others (a prompt, given
        columns) stay fixed. A step whose input has no mask left skips the network call (MDLM's
        caching), so ``nfe`` counts real evaluations only."""
        times = torch.linspace(1.0, 0.0, steps + 1)
        traj = [x.clone()] if return_trajectory else None
        nfe = 0
        for i in range(steps):
            if (x == self.mask_id).any():
                t = times[i].expand(x.shape[0]).to(x.device)
                logits = _call(model_fn, x, t, counter)
                nfe += 1
                x = self.reverse_step(logits, x, times[i], times[i + 1], generator, kind, temperature)
            if traj is not None:
                traj.append(x.clone())
        return SampleResult(x=x, times=times, nfe=nfe, trajectory=traj)


def _call(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, counter: EvalCounter | None) -> torch.Tensor:
    if counter is not None:
        counter.add(1, x.shape[0])
    logits = model_fn(x, t)
    if logits.shape[:2] != x.shape:
        raise ValueError(f"model_fn returned logits {tuple(logits.shape)}, expected ({x.shape[0]}, {x.shape[1]}, V)")
    return logits


def num_transfer_tokens(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's even split: masked (B, L) bool -> (B, steps) counts summing to each row's mask count,
    the remainder going to the first steps."""
    n = masked.sum(1, keepdim=True)
    base, rem = n // steps, n % steps
    out = base.expand(-1, steps).clone()
    out += (torch.arange(steps, device=masked.device).unsqueeze(0) < rem).long()
    return out


def cosine_transfer_tokens(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """MaskGIT's schedule: after step i (of N) floor(n cos(pi/2 (i+1)/N)) tokens stay masked, with at
    least one revealed per step while any remain. masked (B, L) -> counts (B, steps)."""
    n = masked.sum(1)
    remaining = n.clone()
    out = torch.zeros(masked.shape[0], steps, dtype=torch.long, device=masked.device)
    for i in range(steps):
        target = torch.floor(n.float() * math.cos(0.5 * math.pi * (i + 1) / steps)).long()
        k = (remaining - target).clamp_min(torch.minimum(remaining, torch.ones_like(remaining)))
        out[:, i] = k
        remaining = remaining - k
    return out


def confidence_decode(
    model_fn: ModelFn,
    x: torch.Tensor,
    steps: int,
    mask_id: int,
    *,
    block_length: int | None = None,
    schedule: str = "linear",
    threshold: float | None = None,
    temperature: float = 0.0,
    confidence_noise: float = 0.0,
    generator: torch.Generator | None = None,
    counter: EvalCounter | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Confidence-ordered unmasking (LLaDA, Nie et al. 2025; MaskGIT, Chang et al. 2022).

    x (B, L) with masked positions to fill. The masked span is decoded left to right in blocks of
    ``block_length`` (None = one block), ``steps`` steps in total split evenly over blocks. Each
    step: one call logits = model_fn(x, t) with t (B,) = fraction of x still masked; candidate tokens
    by Gumbel-max at ``temperature`` (0 = greedy); confidence = softmax probability of the candidate
    (log-probability plus ``confidence_noise`` * (1 - r) Gumbel noise, r = progress, when
    ``confidence_noise`` > 0: MaskGIT). Revealed: the top-k confident masked positions of the current
    block, k from ``schedule`` (``linear``: LLaDA's even split; ``cosine``: MaskGIT), or with
    ``threshold`` every position whose confidence exceeds it (at least one per step, Fast-dLLM).
    """
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"unknown unmasking schedule {schedule!r}; choose linear or cosine")
    B, L = x.shape
    masked0 = x == mask_id
    cols = masked0.any(0).nonzero().flatten()
    if len(cols) == 0:
        return SampleResult(x=x, times=torch.zeros(1), nfe=0, trajectory=[x.clone()] if return_trajectory else None)
    start, end = int(cols.min()), int(cols.max()) + 1
    block = end - start if block_length is None else int(block_length)
    n_blocks = math.ceil((end - start) / block)
    if steps % n_blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({n_blocks})")
    per_block = steps // n_blocks
    traj = [x.clone()] if return_trajectory else None
    nfe, fractions = 0, []
    for b in range(n_blocks):
        lo, hi = start + b * block, min(start + (b + 1) * block, end)
        in_block = torch.zeros(L, dtype=torch.bool, device=x.device)
        in_block[lo:hi] = True
        split = num_transfer_tokens if schedule == "linear" else cosine_transfer_tokens
        counts = split((x == mask_id) & in_block, per_block)
        for i in range(per_block):
            masked = (x == mask_id) & in_block
            if not masked.any():
                break
            t = (x == mask_id).float().mean(1)
            fractions.append(float(t.mean()))
            logits = _call(model_fn, x, t, counter)
            nfe += 1
            r = (i + 1) / per_block
            x, _ = unmask_step(
                logits,
                x,
                masked,
                mask_id,
                count=counts[:, i],
                threshold=threshold,
                temperature=temperature,
                confidence_noise=confidence_noise * (1 - r),
                generator=generator,
            )
            if traj is not None:
                traj.append(x.clone())
    return SampleResult(x=x, times=torch.tensor(fractions), nfe=nfe, trajectory=traj)


def unmask_step(
    logits: torch.Tensor,
    x: torch.Tensor,
    allowed: torch.Tensor,
    mask_id: int,
    *,
    count: torch.Tensor | None = None,
    threshold: float | None = None,
    temperature: float = 0.0,
    confidence_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One confidence-ordered unmasking step, for decoders and search methods that drive the steps.

    logits (B, L, V) from one model call on x (B, L); ``allowed`` (B, L) bool: masked positions that
    may be revealed now (e.g. the current block). Candidates: Gumbel-max at ``temperature``;
    confidence: their softmax probability, or log-probability + ``confidence_noise`` * Gumbel (MaskGIT,
    the caller anneals the scale). Reveals the ``count`` (B,) most confident allowed positions, or with
    ``threshold`` all above it (at least one). Returns (new x, confidence (B, L) of every candidate,
    -inf outside ``allowed``): Prism's partial remasking reads the confidences of what it decoded."""
    if count is None and threshold is None:
        raise ValueError("unmask_step needs count (top-k) or threshold")
    if mask_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., mask_id] = float("-inf")
    cand = sample_tokens(logits, temperature, generator)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, cand.unsqueeze(-1)).squeeze(-1)
    conf = logp.exp()
    if confidence_noise > 0:
        conf = logp + confidence_noise * gumbel_noise(logp.shape, generator, x.device)
    conf = torch.where(allowed, conf, torch.full_like(conf, float("-inf")))
    k = count if count is not None else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    reveal = _select(conf, allowed, k, threshold)
    return torch.where(reveal, cand, x), conf


def _select(conf: torch.Tensor, masked: torch.Tensor, k: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Reveal set (B, L): confidence above ``threshold`` (at least the best one), else the top-k."""
    best = torch.zeros_like(masked)
    best.scatter_(1, conf.argmax(1, keepdim=True), True)
    best &= masked.any(1, keepdim=True)
    if threshold is not None:
        return (masked & (conf > threshold)) | best
    order = conf.argsort(1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    return masked & (rank < k.unsqueeze(1))
