"""Annealed importance sampling (AIS / Jarzynski) along a path of tilted densities.

Guo, Tao, Chen 2025 (arXiv 2502.04575), section 4. A path pi_l ∝ f_l = e^{-U_l}, l = 0..L, from a
tractable pi_0 (known Z_0) to the target pi_L = pi ∝ e^{-V}. Neal's AIS (eq. 4.1 there):

    x_0 ~ pi_0,   log w = log Z_0 + sum_{l<L} [log f_{l+1}(x_l) - log f_l(x_l)],
    x_{l+1} ~ T_{l+1}(x_l, .)  (MALA, the default, or ULA targeting pi_{l+1}),   E[w] = Z.

E[w] = Z needs x_0 ~ pi_0 and every T_l to leave pi_l invariant. MALA's Metropolis-Hastings test
makes it so (for any step size); ULA does not: its stationary law on a Gaussian of precision p has
variance 1 / (p (1 - h p / 2)), so each weight increment is averaged under a too-wide law and log Z_hat
is biased (the paper's variant, kept as ``transition="ula"``; bias measured in
tests/core/estimators/test_ais.py). Of the two paths below the geometric one starts exactly; the
quadratic tilt starts from a Laplace approximation, so MALA makes it unbiased only up to that start.

Each path writes U_l(x) = c_l V(x) + R_l(x) with an analytic reference part R_l, so its weight
increment costs an oracle call only when c_l changes:

* :class:`QuadraticTiltPath` (the paper's): c_l = 1, R_l = lambda_l |x|^2 / 2, lambda_l =
  lambda_0 (1 - l/L)^p, started at x = 0 with the Laplace approximation
  log Z_0 ≈ -V(0) + (d/2) log(2 pi / lambda_0);
* :class:`GeometricPath`: U_l = beta_l V + (1 - beta_l) (-log N(x; m_0, s_0^2 I)), beta_l = (l/L)^p,
  started from exact draws of N(m_0, s_0^2 I), Z_0 = 1.

For targets that know their modes (``modes``, (K, d)), :func:`mode_coverage` gives the fraction of
final chains nearest (Euclidean) each mode: AIS moves chains only locally, so a path that never
leaves the mode it starts in shows coverage near one-hot whatever its log Z_hat says.

Oracle calls (V or grad V, per chain) are charged to a :class:`core.estimators.densities.CountedTarget`.
The cost bound d beta^2 A^2 / eps^4 uses the action A = int_0^1 |dot pi_theta|^2_{W2} dtheta of the
path in its annealing time theta = l/L: :func:`gaussian_path_action` (closed form on Gaussian
targets) and :func:`action_by_sampling` (W2 speeds between MCMC samples of consecutive levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.estimators.densities import CountedTarget


class QuadraticTiltPath:
    """pi_l ∝ exp(-V(x) - lambda_l |x|^2 / 2), lambda_l = lambda_0 (1 - l/L)^power."""

    def __init__(self, num_levels: int, lambda0: float = 100.0, power: float = 2.0) -> None:
        if num_levels < 1 or lambda0 <= 0:
            raise ValueError(
                f"QuadraticTiltPath: need num_levels >= 1 and lambda0 > 0, got {num_levels}, {lambda0}"
            )
        self.num_levels, self.lambda0, self.power = num_levels, lambda0, power
        self.lambdas = lambda0 * (1 - torch.arange(num_levels + 1, dtype=torch.float64) / num_levels) ** power

    def potential_coef(self, level: int) -> float:
        return 1.0

    def ref_energy(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return 0.5 * float(self.lambdas[level]) * (x**2).sum(1)

    def ref_grad(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return float(self.lambdas[level]) * x

    def ref_curvature(self, level: int) -> float:
        """Hessian scale of R_l (sets the level's stable ULA step)."""
        return float(self.lambdas[level])

    def initial(self, target: CountedTarget, n: int, generator, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """x_0 = 0 for every chain; log Z_0 by Laplace at the origin (one oracle call, shared)."""
        x = torch.zeros(n, target.dim, dtype=dtype)
        v0 = target.potential(x[:1])
        log_z0 = -v0 + 0.5 * target.dim * math.log(2 * math.pi / self.lambda0)
        return x, log_z0.expand(n).clone()


class GeometricPath:
    """pi_l ∝ N(x; m_0, s_0^2 I)^{1 - beta_l} e^{-beta_l V(x)}, beta_l = (l/L)^power."""

    def __init__(
        self, num_levels: int, ref_std: float = 5.0, ref_mean: float = 0.0, power: float = 1.0
    ) -> None:
        if num_levels < 1 or ref_std <= 0:
            raise ValueError(
                f"GeometricPath: need num_levels >= 1 and ref_std > 0, got {num_levels}, {ref_std}"
            )
        self.num_levels, self.ref_std, self.ref_mean, self.power = num_levels, ref_std, ref_mean, power
        self.betas = (torch.arange(num_levels + 1, dtype=torch.float64) / num_levels) ** power

    def potential_coef(self, level: int) -> float:
        return float(self.betas[level])

    def _ref_neg_log_density(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[1]
        return 0.5 * ((x - self.ref_mean) ** 2).sum(1) / self.ref_std**2 + 0.5 * d * math.log(
            2 * math.pi * self.ref_std**2
        )

    def ref_energy(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return (1 - float(self.betas[level])) * self._ref_neg_log_density(x)

    def ref_grad(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return (1 - float(self.betas[level])) * (x - self.ref_mean) / self.ref_std**2

    def ref_curvature(self, level: int) -> float:
        return (1 - float(self.betas[level])) / self.ref_std**2

    def initial(self, target: CountedTarget, n: int, generator, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.ref_mean + self.ref_std * torch.randn(n, target.dim, generator=generator, dtype=dtype)
        return x, torch.zeros(n, dtype=dtype)


@dataclass
class AISResult:
    """``log_w`` (n,) log-weights (E e^{log_w} = Z); ``x`` (n, d) final states; ``oracle_calls``:
    total V / grad V evaluations (all chains); ``acceptance``: mean MALA acceptance (1 for ULA);
    ``coverage``: (K,) fraction of final chains nearest each mode (None when the target has no
    ``modes``)."""

    log_w: torch.Tensor
    x: torch.Tensor
    oracle_calls: int
    acceptance: float
    coverage: torch.Tensor | None = None

    @property
    def oracle_calls_per_chain(self) -> float:
        return self.oracle_calls / self.log_w.shape[0]


def mode_coverage(x: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """(K,) fraction of the points x (n, d) whose nearest (Euclidean) mode among ``modes`` (K, d) is k."""
    if modes.ndim != 2 or x.ndim != 2 or modes.shape[1] != x.shape[1]:
        raise ValueError(
            f"mode_coverage: need x (n, d) and modes (K, d), got {tuple(x.shape)}, {tuple(modes.shape)}"
        )
    nearest = torch.cdist(x.double(), modes.double()).argmin(1)
    return torch.bincount(nearest, minlength=modes.shape[0]).double() / x.shape[0]


def annealed_importance_sampling(
    target: CountedTarget,
    path: QuadraticTiltPath | GeometricPath,
    num_chains: int,
    step_size: float,
    transition: str = "mala",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    max_step_ratio: float = 0.1,
) -> AISResult:
    """Run ``num_chains`` AIS chains (all as one (n, d) tensor) along ``path``; see module docstring.

    MALA (default): the ULA proposal y = x - h grad U_{l+1}(x) + sqrt(2h) xi accepted with probability
    min(1, e^{U(x) - U(y)} q(x | y) / q(y | x)): V and grad V at the proposal, two oracle calls per
    chain and level (V, grad V at the current state are cached). ULA (the paper's): y always
    accepted, one grad V per chain and level, plus one V when c_l changes.
    The step at level l is h_l = min(step_size, max_step_ratio / curvature(R_l)): ULA's stationary
    variance on a Gaussian of precision p is 1 / (p (1 - h p / 2)), so a fixed h that is stable at
    lambda_0 would still inflate the early levels' spread and bias every weight increment.
    """
    if transition not in ("ula", "mala"):
        raise ValueError(f"transition must be 'ula' or 'mala', got {transition!r}")
    if step_size <= 0 or not 0 < max_step_ratio < 2:
        raise ValueError(f"need step_size > 0 and 0 < max_step_ratio < 2, got {step_size}, {max_step_ratio}")
    calls_before = target.oracle_calls
    x, log_w = path.initial(target, num_chains, generator, dtype)
    accepted = 0.0
    v_x = grad_x = None  # cached V(x), grad V(x) at the current state
    for level in range(path.num_levels):
        nxt = level + 1
        dc = path.potential_coef(nxt) - path.potential_coef(level)
        if dc != 0.0:
            if v_x is None:
                v_x = target.potential(x)
            log_w = log_w - dc * v_x
        log_w = log_w - (path.ref_energy(x, nxt) - path.ref_energy(x, level))
        c = path.potential_coef(nxt)
        curvature = path.ref_curvature(nxt)
        h = min(step_size, max_step_ratio / curvature) if curvature > 0 else step_size
        if grad_x is None:
            grad_x = target.grad_potential(x)
        drift_x = -(c * grad_x + path.ref_grad(x, nxt))
        noise = torch.randn(x.shape, generator=generator, dtype=dtype)
        y = x + h * drift_x + math.sqrt(2 * h) * noise
        if transition == "ula":
            x, v_x, grad_x = y, None, None
            continue
        v_y, grad_y = target.potential(y), target.grad_potential(y)
        if v_x is None:
            v_x = target.potential(x)
        u_x = c * v_x + path.ref_energy(x, nxt)
        u_y = c * v_y + path.ref_energy(y, nxt)
        drift_y = -(c * grad_y + path.ref_grad(y, nxt))
        log_q_fwd = -((y - x - h * drift_x) ** 2).sum(1) / (4 * h)
        log_q_bwd = -((x - y - h * drift_y) ** 2).sum(1) / (4 * h)
        log_alpha = (u_x - u_y + log_q_bwd - log_q_fwd).clamp_max(0.0)
        accept = torch.rand(num_chains, generator=generator, dtype=dtype).log() < log_alpha
        accepted += float(accept.double().mean())
        x = torch.where(accept[:, None], y, x)
        v_x = torch.where(accept, v_y, v_x)
        grad_x = torch.where(accept[:, None], grad_y, grad_x)
    acceptance = accepted / path.num_levels if transition == "mala" else 1.0
    modes = getattr(target.target, "modes", None)
    coverage = mode_coverage(x, modes) if modes is not None else None
    return AISResult(log_w, x, target.oracle_calls - calls_before, acceptance, coverage)


def _diag_gaussian_levels(path, mean: torch.Tensor, variances: torch.Tensor, thetas: torch.Tensor):
    """Means (G, d) and stds (G, d) of pi_theta when pi = N(mean, diag(variances)) (both paths stay
    Gaussian: precisions add)."""
    if isinstance(path, QuadraticTiltPath):
        lam = path.lambda0 * (1 - thetas) ** path.power
        prec = 1 / variances[None] + lam[:, None]
        mu = (mean / variances)[None] / prec
    elif isinstance(path, GeometricPath):
        beta = thetas**path.power
        prec = (1 - beta)[:, None] / path.ref_std**2 + beta[:, None] / variances[None]
        mu = (
            (1 - beta)[:, None] * path.ref_mean / path.ref_std**2 + beta[:, None] * (mean / variances)[None]
        ) / prec
    else:
        raise TypeError(f"unknown path {type(path).__name__}")
    return mu, prec.rsqrt()


def gaussian_path_action(
    path: QuadraticTiltPath | GeometricPath, mean: torch.Tensor, variances: torch.Tensor, grid: int = 4001
) -> float:
    """Action A = int_0^1 |dot pi_theta|^2 dtheta for a Gaussian target N(mean, diag(variances)),
    as sum_k W2(pi_k, pi_{k+1})^2 / dtheta on a fine theta-grid; W2 between diagonal Gaussians is
    |mu - mu'|^2 + |sigma - sigma'|^2 (Bures on commuting covariances)."""
    thetas = torch.linspace(0, 1, grid, dtype=torch.float64)
    mu, std = _diag_gaussian_levels(path, mean.double(), variances.double(), thetas)
    w2_sq = ((mu[1:] - mu[:-1]) ** 2).sum(1) + ((std[1:] - std[:-1]) ** 2).sum(1)
    return float(w2_sq.sum() * (grid - 1))


def empirical_w2_squared(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared W2 between two equal-size point clouds (n, d) by exact assignment (n up to ~2000)."""
    from scipy.optimize import linear_sum_assignment

    if x.shape != y.shape:
        raise ValueError(
            f"empirical_w2_squared: clouds must have equal shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    cost = torch.cdist(x.double(), y.double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    return float(cost[rows, cols].mean())


def action_by_sampling(
    target: CountedTarget,
    path: QuadraticTiltPath | GeometricPath,
    num_points: int = 16,
    num_samples: int = 512,
    mcmc_steps: int = 200,
    step_size: float = 0.01,
    generator: torch.Generator | None = None,
) -> float:
    """Action of ``path`` estimated from samples: MALA chains follow the levels theta_0..theta_G
    (G = num_points, mcmc_steps MALA moves per level, warm-started from the previous level), and
    A ≈ sum_k W2_hat(theta_k, theta_{k+1})^2 / (theta_{k+1} - theta_k), W2_hat between two disjoint
    halves of the chains. Biased upwards by the empirical-W2 floor between two n-samples of one law
    (O(n^{-2/d}) per segment), and by unmixed MCMC on multimodal levels; a coarse grid biases it
    downwards (W2 is a length, A sums squared speeds). Oracle calls are charged to ``target``."""
    levels = torch.linspace(0, path.num_levels, num_points + 1).round().long().tolist()
    x, _ = path.initial(target, 2 * num_samples, generator, torch.float64)
    clouds = []
    for level in levels:
        x = _mala_at_level(target, path, x, level, mcmc_steps, step_size, generator)
        clouds.append(x.clone())
    action = 0.0
    for k in range(num_points):
        dtheta = (levels[k + 1] - levels[k]) / path.num_levels
        action += empirical_w2_squared(clouds[k][:num_samples], clouds[k + 1][num_samples:]) / dtheta
    return action


def _mala_at_level(target, path, x, level, steps, h, generator):
    c = path.potential_coef(level)

    def energy_grad(z):
        return c * target.potential(z) + path.ref_energy(z, level), c * target.grad_potential(
            z
        ) + path.ref_grad(z, level)

    u_x, g_x = energy_grad(x)
    for _ in range(steps):
        y = x - h * g_x + math.sqrt(2 * h) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        u_y, g_y = energy_grad(y)
        log_alpha = (
            u_x - u_y - ((x - y + h * g_y) ** 2).sum(1) / (4 * h) + ((y - x + h * g_x) ** 2).sum(1) / (4 * h)
        )
        accept = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).log() < log_alpha
        x = torch.where(accept[:, None], y, x)
        u_x, g_x = torch.where(accept, u_y, u_x), torch.where(accept[:, None], g_y, g_x)
    return x
