"""Unnormalised target densities pi(x) = e^{-V(x)} / Z for normalizing-constant estimation.

Every target gives the potential ``V(x)`` (B,), its gradient ``grad V(x)`` (B, d), the true
``log_z`` (log of Z = int e^{-V}) where it is known, and ``sample(n, generator)`` where an exact
sampler exists (for MMD / W2 and mode-weight checks). Estimators never call a target directly:
they wrap it in :class:`CountedTarget`, which charges every evaluation of V or grad V to a
:class:`core.utils.nfe.EvalCounter` (``items`` = oracle calls, one per sample per evaluation).

Targets (Guo, Tao, Chen 2025, arXiv 2502.04575, section 6; ZOD-MC / NormConstEst densities):

* :class:`GaussianMixture`: sum_k w_k N(m_k, C_k), any d; Z = sum_k w_k; closed-form score of its
  OU-noised marginals (an oracle reference for the reverse-diffusion estimator);
* :func:`four_mode_gmm`: the paper's 2-D mixture (means (0,0),(0,11),(9,9),(11,0), weights
  .1/.2/.3/.4, the reference code's covariances), Z = 1;
* :func:`random_mixture`: K modes of given (unequal) weights in any d, means on a sphere with a
  minimum separation, full covariances Q diag(eig) Q^T with random rotations, all from one seed;
* :func:`gaussian`: one Gaussian N(m, diag(v)) in any d (the d-scaling family);
* :class:`Funnel`: Neal's funnel, x_0 ~ N(0, s^2), x_i | x_0 ~ N(0, e^{x_0}), log Z = 0;
* :class:`ManyWell`: d/2 independent double wells V(a, b) = a^4 - 6 a^2 - a/2 + b^2/2, log Z by
  1-D quadrature;
* :class:`ModifiedMuellerBrown`: the reference code's tilted, dilated Mueller-Brown potential,
  log Z by quadrature on a grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from core.utils.nfe import EvalCounter


def _check_points(x: torch.Tensor, dim: int, name: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name}: expected points of shape (B, {dim}), got {tuple(x.shape)}")


class Target:
    """Base class: subclasses define ``potential``; ``grad_potential`` defaults to autograd."""

    dim: int
    log_z: float | None = None
    name: str = "target"

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """V(x): (B, d) -> (B,)."""
        raise NotImplementedError

    def grad_potential(self, x: torch.Tensor) -> torch.Tensor:
        """grad V(x): (B, d) -> (B, d), by autograd unless a subclass gives it in closed form."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.potential(x).sum(), x)
        return grad.detach()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no exact sampler")

    @property
    def has_sampler(self) -> bool:
        return type(self).sample is not Target.sample


class CountedTarget:
    """A target whose every V / grad V evaluation is charged to ``counter`` (items = rows)."""

    def __init__(self, target: Target, counter: EvalCounter | None = None) -> None:
        self.target = target
        self.counter = counter if counter is not None else EvalCounter()
        self.dim = target.dim

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.add(1, x.shape[0])
        return self.target.potential(x)

    def grad_potential(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.add(1, x.shape[0])
        return self.target.grad_potential(x)

    @property
    def oracle_calls(self) -> int:
        return self.counter.items


class GaussianMixture(Target):
    """e^{-V(x)} = sum_k w_k N(x; m_k, C_k); the weights need not sum to one, Z = sum_k w_k.

    means (K, d), covs (K, d, d) symmetric positive definite, weights (K,) positive.
    """

    def __init__(
        self,
        means: Sequence | torch.Tensor,
        covs: Sequence | torch.Tensor,
        weights: Sequence | torch.Tensor,
        name: str = "gmm",
    ) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"GaussianMixture: means must be (K, d), got {tuple(self.means.shape)}")
        k, d = self.means.shape
        if self.covs.shape != (k, d, d):
            raise ValueError(f"GaussianMixture: covs must be ({k}, {d}, {d}), got {tuple(self.covs.shape)}")
        if self.weights.shape != (k,) or bool((self.weights <= 0).any()):
            raise ValueError(
                f"GaussianMixture: weights must be ({k},) and positive, got {self.weights.tolist()}"
            )
        try:
            torch.linalg.cholesky(self.covs)
        except RuntimeError as err:
            raise ValueError("GaussianMixture: every covariance must be positive definite") from err
        self.dim, self.num_components, self.name = d, k, name
        self.log_z = float(torch.log(self.weights.sum()))
        self.mode_weights = self.weights / self.weights.sum()
        self._precision0 = self._precision(0.0)

    @property
    def modes(self) -> torch.Tensor:
        """(K, d) component means, the modes that mode coverage is measured against (distinct modes
        when the components are well separated)."""
        return self.means

    def _precision(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Precision (K, d, d) and log-determinant (K,) of the OU marginal's components at time t."""
        a, h = math.exp(-t), -math.expm1(-2.0 * t)
        cov = a * a * self.covs + h * torch.eye(self.dim, dtype=torch.float64)
        return torch.linalg.inv(cov), torch.linalg.slogdet(cov)[1]

    def _component_log_densities(self, x: torch.Tensor, t: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """log w_k + log N(x; a m_k, a^2 C_k + h I) for the OU marginal at time t (a = e^{-t},
        h = 1 - e^{-2t}); returns ((K, B) log terms, (K, B, d) precision @ (x - mean)).
        Component-major layout so that one batched matmul does all K quadratic forms."""
        _check_points(x, self.dim, self.name)
        a = math.exp(-t)
        prec, logdet = self._precision(t) if t != 0.0 else self._precision0
        prec, logdet = prec.to(x.dtype), logdet.to(x.dtype)
        diff = x[None] - (a * self.means).to(x.dtype)[:, None, :]  # (K, B, d)
        prec_diff = torch.bmm(diff, prec)  # precisions are symmetric
        quad = (diff * prec_diff).sum(-1)
        const = self.weights.log().to(x.dtype) - 0.5 * (logdet + self.dim * math.log(2 * math.pi))
        return const[:, None] - 0.5 * quad, prec_diff

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(self._component_log_densities(x)[0], dim=0)

    def grad_potential(self, x: torch.Tensor) -> torch.Tensor:
        log_terms, prec_diff = self._component_log_densities(x)
        return (torch.softmax(log_terms, dim=0)[..., None] * prec_diff).sum(0)

    def noised_score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Exact grad log p_t(x) of the OU marginal p_t = law of e^{-t} X_0 + sqrt(1-e^{-2t}) eps,
        X_0 ~ pi (a mixture again). Oracle reference only: not available for general targets."""
        log_terms, prec_diff = self._component_log_densities(x, t)
        return -(torch.softmax(log_terms, dim=0)[..., None] * prec_diff).sum(0)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) posterior probability of each component given x (for mode weights)."""
        return torch.softmax(self._component_log_densities(x)[0], dim=0).T

    def recovered_mode_weights(self, x: torch.Tensor, log_w: torch.Tensor | None = None) -> torch.Tensor:
        """(K,) share of the samples x (n, d) nearest (by responsibility) to each component,
        self-normalised by importance log-weights ``log_w`` (n,) when given (consistent for the
        true weights even when the sampler's own law is off)."""
        comp = self.responsibilities(x).argmax(1)
        w = (
            torch.softmax(log_w.double(), 0)
            if log_w is not None
            else torch.full((x.shape[0],), 1.0 / x.shape[0])
        )
        return torch.zeros(self.num_components, dtype=torch.float64).index_add_(0, comp, w.double())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.multinomial(self.mode_weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + torch.einsum("bij,bj->bi", chol[comp], eps)


def four_mode_gmm(
    means: Sequence | None = None, covs: Sequence | None = None, weights: Sequence | None = None
) -> GaussianMixture:
    """The paper's 2-D four-mode mixture (Z = 1); every parameter can be overridden."""
    means = means if means is not None else [[0.0, 0.0], [0.0, 11.0], [9.0, 9.0], [11.0, 0.0]]
    covs = (
        covs
        if covs is not None
        else [
            [[1.0, 0.5], [0.5, 1.0]],
            [[0.3, -0.2], [-0.2, 0.3]],
            [[1.0, 0.3], [0.3, 1.0]],
            [[1.2, -1.0], [-1.0, 1.2]],
        ]
    )
    weights = weights if weights is not None else [0.1, 0.2, 0.3, 0.4]
    return GaussianMixture(means, covs, weights, name="four_mode_gmm")


def gaussian(
    dim: int, mean: float = 1.0, variances: Sequence | None = None, weight: float = 1.0
) -> GaussianMixture:
    """weight * N(mean * 1, diag(variances)) in R^dim (default variances: 1, log Z = log weight)."""
    var = (
        torch.ones(dim, dtype=torch.float64)
        if variances is None
        else torch.as_tensor(variances, dtype=torch.float64)
    )
    if var.shape != (dim,):
        raise ValueError(f"gaussian: variances must have length {dim}, got {tuple(var.shape)}")
    return GaussianMixture(
        torch.full((1, dim), float(mean), dtype=torch.float64),
        torch.diag(var)[None],
        [weight],
        name=f"gaussian_d{dim}",
    )


def random_mixture(
    dim: int,
    weights: Sequence,
    radius: float = 6.0,
    min_separation: float = 6.0,
    eig_range: Sequence = (0.5, 2.0),
    seed: int = 0,
) -> GaussianMixture:
    """sum_k w_k N(m_k, C_k) in R^dim, fixed by ``seed``: means radius * u_k with u_k uniform on the
    sphere, redrawn until every pair is ``min_separation`` apart; C_k = Q_k diag(e_k) Q_k^T with Q_k
    a random rotation (QR of a Gaussian matrix) and e_k log-uniform in ``eig_range``. Z = sum_k w_k."""
    lo, hi = (float(v) for v in eig_range)
    if dim < 1 or not 0 < lo <= hi or radius <= 0:
        raise ValueError(
            "random_mixture: need dim >= 1, 0 < eig_range[0] <= eig_range[1], radius > 0; "
            f"got dim={dim}, eig_range={list(eig_range)}, radius={radius}"
        )
    k = len(weights)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(10000):
        u = torch.randn(k, dim, generator=gen, dtype=torch.float64)
        means = radius * u / u.norm(dim=1, keepdim=True)
        if k < 2 or float(torch.pdist(means).min()) >= min_separation:
            break
    else:
        raise ValueError(
            f"random_mixture: no {k} means on a radius-{radius} sphere in d={dim} are "
            f"min_separation={min_separation} apart"
        )
    q, r = torch.linalg.qr(torch.randn(k, dim, dim, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]  # Haar-distributed rotations
    frac = torch.rand(k, dim, generator=gen, dtype=torch.float64)
    eig = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * frac)
    covs = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    return GaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), weights, name=f"gmm{k}_d{dim}")


class Funnel(Target):
    """Neal's funnel in d dims: x_0 ~ N(0, scale^2), x_i | x_0 ~ N(0, e^{x_0}); normalised, log Z = 0."""

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        if dim < 2:
            raise ValueError(f"Funnel: dim must be >= 2, got {dim}")
        self.dim, self.scale, self.log_z, self.name = dim, scale, 0.0, f"funnel_d{dim}"

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.dim, self.name)
        x0, rest = x[:, 0], x[:, 1:]
        v0 = 0.5 * (x0 / self.scale) ** 2 + 0.5 * math.log(2 * math.pi * self.scale**2)
        vr = 0.5 * (rest**2).sum(1) * torch.exp(-x0) + 0.5 * (self.dim - 1) * (x0 + math.log(2 * math.pi))
        return v0 + vr

    def grad_potential(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.dim, self.name)
        x0, rest = x[:, 0], x[:, 1:]
        g0 = x0 / self.scale**2 - 0.5 * (rest**2).sum(1) * torch.exp(-x0) + 0.5 * (self.dim - 1)
        return torch.cat([g0[:, None], rest * torch.exp(-x0)[:, None]], dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = self.scale * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        rest = torch.randn(n, self.dim - 1, generator=generator, dtype=torch.float64) * torch.exp(x0 / 2)
        return torch.cat([x0, rest], dim=1)


def _double_well_grid(
    n: int = 200001, lo: float = -6.0, hi: float = 6.0
) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.linspace(lo, hi, n, dtype=torch.float64)
    return a, -(a**4) + 6 * a**2 + 0.5 * a


class ManyWell(Target):
    """d/2 independent pairs (a, b) with V = a^4 - 6 a^2 - a/2 + b^2/2 (Midgley et al. 2023);
    2^{d/2} modes. Z = (int e^{-a^4 + 6a^2 + a/2} da * sqrt(2 pi))^{d/2}, the 1-D integral by quadrature."""

    def __init__(self, dim: int = 4) -> None:
        if dim < 2 or dim % 2:
            raise ValueError(f"ManyWell: dim must be even and >= 2, got {dim}")
        self.dim, self.name = dim, f"many_well_d{dim}"
        grid, logf = _double_well_grid()
        self._grid, self._cdf = grid, torch.cumsum(torch.exp(logf - logf.max()), 0)
        log_z_a = float(torch.logsumexp(logf, 0) + math.log(grid[1] - grid[0]))
        self.log_z = (dim // 2) * (log_z_a + 0.5 * math.log(2 * math.pi))

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.dim, self.name)
        a, b = x[:, 0::2], x[:, 1::2]
        return (a**4 - 6 * a**2 - 0.5 * a + 0.5 * b**2).sum(1)

    def grad_potential(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.dim, self.name)
        grad = torch.empty_like(x)
        a = x[:, 0::2]
        grad[:, 0::2] = 4 * a**3 - 12 * a - 0.5
        grad[:, 1::2] = x[:, 1::2]
        return grad

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """a by inverse CDF on a 200k-point grid (exact up to 6e-5 grid spacing), b Gaussian."""
        half = self.dim // 2
        u = torch.rand(n * half, generator=generator, dtype=torch.float64) * self._cdf[-1]
        a = self._grid[torch.searchsorted(self._cdf, u).clamp_max(len(self._grid) - 1)].reshape(n, half)
        b = torch.randn(n, half, generator=generator, dtype=torch.float64)
        return torch.stack([a, b], dim=2).reshape(n, self.dim)


class ModifiedMuellerBrown(Target):
    """V(x) = beta (V_q + V_m)(u, v), (u, v) = (x - (3.5, -6.5)) / 5: the Mueller-Brown sum of four
    anisotropic Gaussian bumps V_m plus a quadratic V_q (reference code's constants); log Z by
    quadrature (the reference code quotes Z = 22340.9983)."""

    _A = (-200.0, -100.0, -170.0, 15.0)
    _a = (-1.0, -1.0, -6.5, 0.7)
    _b = (0.0, 0.0, 11.0, 0.6)
    _c = (-10.0, -10.0, -6.5, 0.7)
    _x0 = (1.0, 0.0, -0.5, -1.0)
    _y0 = (0.0, 0.5, 1.5, 1.0)

    def __init__(self, beta: float = 0.1, quadrature_points: int = 601) -> None:
        self.dim, self.beta, self.name = 2, beta, "mueller_brown"
        lin = torch.linspace(-40.0, 50.0, quadrature_points, dtype=torch.float64)
        gx, gy = torch.meshgrid(lin, lin, indexing="ij")
        v = self.potential(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
        self.log_z = float(torch.logsumexp(-v, 0) + 2 * math.log(lin[1] - lin[0]))

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, 2, self.name)
        u, v = (x[:, 0] - 3.5) / 5.0, (x[:, 1] + 6.5) / 5.0
        consts = [
            torch.tensor(c, dtype=x.dtype) for c in (self._A, self._a, self._b, self._c, self._x0, self._y0)
        ]
        A, a, b, c, x0, y0 = consts
        du, dv = u[:, None] - x0, v[:, None] - y0
        v_m = (A * torch.exp(a * du**2 + b * du * dv + c * dv**2)).sum(1)
        v_q = 35.0136 * (u + 0.033923) ** 2 + 59.8399 * (v - 0.465694) ** 2
        return self.beta * (v_q + v_m)


def make_target(name: str, **kwargs) -> Target:
    """Build a target by name: four_mode_gmm | gmm | random_mixture | gaussian | funnel | many_well |
    mueller_brown."""
    builders = {
        "four_mode_gmm": four_mode_gmm,
        "random_mixture": random_mixture,
        "gmm": GaussianMixture,
        "gaussian": gaussian,
        "funnel": Funnel,
        "many_well": ManyWell,
        "mueller_brown": ModifiedMuellerBrown,
    }
    if name not in builders:
        raise ValueError(f"unknown target {name!r}; choose one of {sorted(builders)}")
    return builders[name](**kwargs)
