"""Reverse-diffusion estimator of a normalizing constant, with training-free score estimates.

Guo, Tao, Chen 2025 (arXiv 2502.04575), section 5. Forward OU dX = -X dt + sqrt(2) dW from
X_0 ~ pi ∝ e^{-V}; p_t its marginal, h_t = 1 - e^{-2t}. The reverse process Y_s = X_{T-s},
dY = (Y + 2 grad log p_{T-s}(Y)) ds + sqrt(2) dB, is run with a score estimate s_hat by the
exponential integrator on forward times T = t_0 > t_1 > ... > t_K = delta (Delta_k = t_k - t_{k+1}):

    y_0 ~ gamma = N(0, h_T I),
    y_{k+1} = e^{Delta} y_k + 2 (e^{Delta} - 1) s_k + sqrt(e^{2 Delta} - 1) xi_k,   s_k = s_hat(y_k, t_k),

and the Girsanov weight of the path against the score-free process dY = Y ds + sqrt(2) dB gives

    log Z_hat = -V(y_K) + (T - delta) d - log gamma(y_0) - sum_k g_k,
    paper:  g_k = Delta |s_k|^2 + sqrt(2 Delta) s_k . xi'_k,  xi' = rho xi + sqrt(1 - rho^2) xi'',
            rho = sqrt(2) (e^Delta - 1) / sqrt((e^{2 Delta} - 1) Delta);
    exact:  g_k = 2 (e^Delta-1)^2/(e^{2 Delta}-1) |s_k|^2 + 2 (e^Delta-1)/sqrt(e^{2 Delta}-1) s_k . xi_k,

``exact`` being the log-ratio of the two Gaussian transition kernels (the paper's weight with the
independent xi'' integrated out: the same expectation, less variance). Under the score-free
process the Jacobian e^{-d(T-delta)} of y_0 -> y_K makes E[e^{-V(y_K)} e^{d(T-delta)} / gamma(y_0)]
= Z exactly, so E[Z_hat] = Z for ANY score estimate that uses only the past: score error costs
variance, not bias.

Score estimates (all their V / grad V calls are charged to the :class:`CountedTarget`), from
grad log p_t(x) = (e^{-t} E[X_0 | X_t = x] - x) / h_t,
p(x_0 | x) ∝ e^{-V(x_0)} N(x_0; e^t x, (e^{2t} - 1) I):

* :class:`SNISScore`: self-normalised importance sampling of E[X_0 | x] with M proposals from
  N(e^t x, (e^{2t}-1) I) (M oracle calls per chain per step);
* :class:`ULAPosteriorScore`: ULA on p(x_0 | x), started from SNIS resamples (M_is + M * steps calls);
* :class:`SNISMALAScore`: SNIS, then an inner Langevin correction as in reverse-diffusion Monte
  Carlo: J resamples of the M proposals, each moved by S MALA steps that leave p(x_0 | x) invariant
  (:func:`mala_on_posterior`), E[X_0 | x] ≈ mean of the J final states (M + J + 2 J S calls).
  The SNIS proposal's efficiency on a component of variance sigma^2 is
  ESS/M = [sigma^2 (sigma^2 + 2 s^2) / (sigma^2 + s^2)^2]^{d/2}, s^2 = e^{2t} - 1, which collapses
  with d; the MALA moves repair what the few effective proposals miss within a mode;
* :class:`ExactMixtureScore`: the closed-form score of a Gaussian mixture's p_t, an ORACLE
  REFERENCE (one counted call per chain per step), only to isolate discretisation from score error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.diffusion.solvers import time_grid
from core.estimators.densities import CountedTarget, GaussianMixture

ScoreFn = Callable[[torch.Tensor, float], torch.Tensor]


def forward_time_grid(T: float, delta: float, steps: int, kind: str = "uniform") -> torch.Tensor:
    """K + 1 forward times T = t_0 > ... > t_K = delta: ``uniform`` (the paper's) or ``geometric``
    (log-spaced, dense near delta where the score changes fastest)."""
    if not 0 < delta < T or steps < 1:
        raise ValueError(f"need 0 < delta < T and steps >= 1, got delta={delta}, T={T}, steps={steps}")
    if kind not in ("uniform", "geometric"):
        raise ValueError(f"unknown time grid {kind!r}; choose uniform or geometric")
    return time_grid(T, delta, steps, kind, dtype=torch.float64)


class SNISScore:
    """s_hat(x, t) = (e^{-t} m_hat - x) / h_t, m_hat = sum_j softmax(-V(z_j)) z_j,
    z_j ~ N(e^t x, (e^{2t} - 1) I), j = 1..M. x: (B, d) -> (B, d); B * M oracle calls."""

    def __init__(
        self, target: CountedTarget, num_samples: int, generator: torch.Generator | None = None
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"SNISScore: num_samples must be >= 1, got {num_samples}")
        self.target, self.num_samples, self.generator = target, num_samples, generator

    def posterior_proposals(self, x: torch.Tensor, t: float, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, m, d) proposals from N(e^t x, (e^{2t}-1) I) and their (B, m) log-weights -V."""
        b, d = x.shape
        std = math.sqrt(math.expm1(2 * t))
        z = math.exp(t) * x[:, None, :] + std * torch.randn(b, m, d, generator=self.generator, dtype=x.dtype)
        log_w = -self.target.potential(z.reshape(b * m, d)).reshape(b, m)
        return z, torch.nan_to_num(log_w, nan=-math.inf)

    def resample(self, x: torch.Tensor, t: float, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """m multinomial resamples per row of the ``num_samples`` weighted proposals: (B m, d) points
        (rows of one x contiguous) and their (B m,) values -V."""
        b, d = x.shape
        z, log_w = self.posterior_proposals(x, t, self.num_samples)
        pick = torch.multinomial(torch.softmax(log_w, 1), m, replacement=True, generator=self.generator)
        x0 = torch.gather(z, 1, pick[..., None].expand(b, m, d)).reshape(b * m, d)
        return x0, torch.gather(log_w, 1, pick).reshape(b * m)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        z, log_w = self.posterior_proposals(x, t, self.num_samples)
        mean_x0 = (torch.softmax(log_w, dim=1)[..., None] * z).sum(1)
        return (math.exp(-t) * mean_x0 - x) / -math.expm1(-2 * t)


class ULAPosteriorScore:
    """s_hat(x, t) = (e^{-t} mean_j x0_j - x) / h_t, x0_j = M ULA chains on p(x_0 | x) after
    ``ula_steps`` steps of size min(step_size, step_ratio (e^{2t} - 1)), started from M resamples of
    ``importance_samples`` SNIS proposals. Oracle calls per chain: importance_samples + M * ula_steps."""

    def __init__(
        self,
        target: CountedTarget,
        num_samples: int,
        ula_steps: int,
        step_size: float = 0.01,
        step_ratio: float = 0.2,
        importance_samples: int = 16,
        generator: torch.Generator | None = None,
    ) -> None:
        if min(num_samples, ula_steps, importance_samples) < 1 or step_size <= 0:
            raise ValueError(
                "ULAPosteriorScore: num_samples, ula_steps, importance_samples >= 1, step_size > 0"
            )
        self.target, self.num_samples, self.ula_steps = target, num_samples, ula_steps
        self.step_size, self.step_ratio, self.generator = step_size, step_ratio, generator
        self._snis = SNISScore(target, importance_samples, generator)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        b, d = x.shape
        m = self.num_samples
        x0, _ = self._snis.resample(x, t, m)
        centre = (math.exp(t) * x).repeat_interleave(m, dim=0)
        var = math.expm1(2 * t)
        h = min(self.step_size, self.step_ratio * var)
        for _ in range(self.ula_steps):
            grad_log_post = -self.target.grad_potential(x0) - (x0 - centre) / var
            noise = torch.randn(x0.shape, generator=self.generator, dtype=x.dtype)
            x0 = x0 + h * torch.nan_to_num(grad_log_post) + math.sqrt(2 * h) * noise
        mean_x0 = x0.reshape(b, m, d).mean(1)
        return (math.exp(-t) * mean_x0 - x) / -math.expm1(-2 * t)


def mala_on_posterior(
    target: CountedTarget,
    x0: torch.Tensor,
    neg_v: torch.Tensor,
    centre: torch.Tensor,
    var: float,
    steps: int,
    h: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """``steps`` MALA moves of the rows x0 (n, d) targeting p(x_0 | x) ∝ e^{-V(x_0)} N(x_0; centre, var I)
    (``centre`` (n, d) = e^t x per row, var = e^{2t} - 1; ``neg_v`` (n,) = -V(x0), known from SNIS).
    Proposal y = x0 + h grad log p(x0) + sqrt(2h) xi, accepted with probability
    min(1, p(y) q(x0 | y) / (p(x0) q(y | x0))), so p(x_0 | x) is invariant for any h.
    Oracle calls: n (grad V at the start) + 2 n per step (none when steps = 0). Returns (states, mean acceptance)."""

    def log_post_grad(z, nv):
        diff = z - centre
        log_p = nv - 0.5 * (diff**2).sum(1) / var
        return log_p, -target.grad_potential(z) - diff / var

    if steps == 0:
        return x0, float("nan")
    log_p, grad = log_post_grad(x0, neg_v)
    accepted = 0.0
    for _ in range(steps):
        y = x0 + h * grad + math.sqrt(2 * h) * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        log_p_y, grad_y = log_post_grad(y, -target.potential(y))
        log_q_fwd = -((y - x0 - h * grad) ** 2).sum(1) / (4 * h)
        log_q_bwd = -((x0 - y - h * grad_y) ** 2).sum(1) / (4 * h)
        log_alpha = torch.nan_to_num(log_p_y - log_p + log_q_bwd - log_q_fwd, nan=-math.inf)
        accept = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype).log() < log_alpha
        accepted += float(accept.double().mean())
        x0 = torch.where(accept[:, None], y, x0)
        log_p, grad = torch.where(accept, log_p_y, log_p), torch.where(accept[:, None], grad_y, grad)
    return x0, accepted / max(steps, 1)


class SNISMALAScore:
    """s_hat(x, t) = (e^{-t} mean_j x0_j - x) / h_t: M SNIS proposals (as :class:`SNISScore`), J
    multinomial resamples of them, each moved by S MALA steps on p(x_0 | x) of size
    h = min(step_size, step_ratio (e^{2t} - 1)) (the posterior's Gaussian factor has variance
    e^{2t} - 1). Oracle calls per chain and step: M + J (1 + 2 S). ``acceptance``: running mean."""

    def __init__(
        self,
        target: CountedTarget,
        num_samples: int,
        inner_chains: int,
        inner_steps: int,
        step_size: float = 0.2,
        step_ratio: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        if min(num_samples, inner_chains) < 1 or inner_steps < 0 or step_size <= 0 or step_ratio <= 0:
            raise ValueError(
                "SNISMALAScore: num_samples, inner_chains >= 1, inner_steps >= 0, step_size, step_ratio > 0; "
                f"got {num_samples}, {inner_chains}, {inner_steps}, {step_size}, {step_ratio}"
            )
        self.inner_chains, self.inner_steps = inner_chains, inner_steps
        self.step_size, self.step_ratio, self.generator = step_size, step_ratio, generator
        self._snis = SNISScore(target, num_samples, generator)
        self._acc_sum, self._acc_n = 0.0, 0

    @property
    def acceptance(self) -> float:
        return self._acc_sum / self._acc_n if self._acc_n else float("nan")

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        b, d = x.shape
        j = self.inner_chains
        x0, neg_v = self._snis.resample(x, t, j)
        var = math.expm1(2 * t)
        centre = (math.exp(t) * x).repeat_interleave(j, dim=0)
        h = min(self.step_size, self.step_ratio * var)
        target, steps = self._snis.target, self.inner_steps
        x0, acc = mala_on_posterior(target, x0, neg_v, centre, var, steps, h, self.generator)
        if self.inner_steps:
            self._acc_sum, self._acc_n = self._acc_sum + acc, self._acc_n + 1
        mean_x0 = x0.reshape(b, j, d).mean(1)
        return (math.exp(-t) * mean_x0 - x) / -math.expm1(-2 * t)


class ExactMixtureScore:
    """ORACLE REFERENCE: the closed-form score of a Gaussian mixture's OU marginal p_t; each call
    is charged one oracle call per row so that budgets stay comparable."""

    def __init__(self, mixture: GaussianMixture, target: CountedTarget) -> None:
        self.mixture, self.target = mixture, target

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.target.counter.add(1, x.shape[0])
        return self.mixture.noised_score(x, t)


@dataclass
class RDSResult:
    """``log_w`` (n,) log Z_hat per chain; ``x`` (n, d) final states y_K; ``oracle_calls``: total
    V / grad V (and oracle-score) evaluations charged during the run, all chains."""

    log_w: torch.Tensor
    x: torch.Tensor
    oracle_calls: int

    @property
    def oracle_calls_per_chain(self) -> float:
        return self.oracle_calls / self.log_w.shape[0]


def reverse_diffusion_log_z(
    target: CountedTarget,
    score: ScoreFn,
    num_chains: int,
    T: float = 5.0,
    delta: float = 5e-3,
    steps: int = 50,
    grid: str = "uniform",
    weight: str = "paper",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> RDSResult:
    """Run the reverse-diffusion estimator on ``num_chains`` chains at once (see module docstring)."""
    if weight not in ("paper", "exact"):
        raise ValueError(f"weight must be 'paper' or 'exact', got {weight!r}")
    calls_before = target.oracle_calls
    d = target.dim
    times = forward_time_grid(T, delta, steps, grid)
    h_T = -math.expm1(-2 * T)
    y = math.sqrt(h_T) * torch.randn(num_chains, d, generator=generator, dtype=dtype)
    log_gamma = -0.5 * (y**2).sum(1) / h_T - 0.5 * d * math.log(2 * math.pi * h_T)
    girsanov = torch.zeros(num_chains, dtype=dtype)
    for k in range(steps):
        t, dt = float(times[k]), float(times[k] - times[k + 1])
        s = score(y, t)
        xi = torch.randn(y.shape, generator=generator, dtype=dtype)
        em1, e2m1 = math.expm1(dt), math.expm1(2 * dt)
        if weight == "paper":
            rho = math.sqrt(2) * em1 / math.sqrt(e2m1 * dt)
            extra = torch.randn(y.shape, generator=generator, dtype=dtype)
            xi_w = rho * xi + math.sqrt(max(1 - rho**2, 0.0)) * extra
            girsanov = girsanov + dt * (s**2).sum(1) + math.sqrt(2 * dt) * (s * xi_w).sum(1)
        else:
            girsanov = (
                girsanov + 2 * em1**2 / e2m1 * (s**2).sum(1) + 2 * em1 / math.sqrt(e2m1) * (s * xi).sum(1)
            )
        y = math.exp(dt) * y + 2 * em1 * s + math.sqrt(e2m1) * xi
    log_w = -target.potential(y) + (T - delta) * d - log_gamma - girsanov
    return RDSResult(torch.nan_to_num(log_w, nan=-math.inf), y, target.oracle_calls - calls_before)
