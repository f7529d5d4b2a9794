"""Ridge geometry of the smoothed empirical density under a scalar noising process (docs/methods/ridge_phases.md).

For training points x_1..x_n (optionally weighted by w_i, sum w_i = 1) and x_t = a_t x0 + sqrt(h_t) z
(OU: a_t = e^{-t}, h_t = 1 - e^{-2t}), the smoothed empirical density is

    p_t(x) = sum_i w_i N(x; a_t x_i, h_t I).

With the posterior weights g_i(x) = softmax_i(log w_i - |x - a_t x_i|^2 / (2 h_t)) and mu = sum_i g_i x_i:

    grad log p_t(x)   = (a_t mu - x) / h_t
    Hess log p_t(x)   = a_t^2 Cov_g(x_i) / h_t^2 - I / h_t

(the second equals sum_i g_i (x - a x_i)(x - a x_i)^T / h^2 - I/h - grad grad^T of the paper).
A d*-dimensional ridge: the normal space at x is spanned by E, the eigenvectors of the d - d* smallest
Hessian eigenvalues; x is on the ridge when E^T grad log p_t(x) = 0 and those eigenvalues are < 0.

Everything streams over chunks of training points with an online log-sum-exp (as in flash
attention), so n = 5000 points in d = 32 against 2000 queries needs only O(queries * d^2) memory.
Computations run in float64 by default: at small t the Hessian is -I/h plus a tiny covariance term,
and its eigenvectors are only as good as that term's precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.diffusion.processes import ScalarProcess


def _coefficients(process: ScalarProcess, t, m: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, h_t) as (m,) tensors for a scalar time or per-query times of shape (m,)."""
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.ndim == 0:
        t = t.expand(m)
    if t.shape != (m,):
        raise ValueError(f"t must be a scalar or have shape ({m},), got {tuple(t.shape)}")
    a = process.alpha(t).to(dtype)
    h = process.sigma(t).to(dtype) ** 2
    return a, h


@dataclass
class PosteriorMoments:
    """Moments of the posterior over training points at queries x (m, d).

    ``log_norm`` (m,): log sum_i w_i exp(-|x - a x_i|^2 / (2h)); ``mean`` (m, d): mu = E_g[x_i];
    ``cov`` (m, d, d) or None: Cov_g[x_i]; ``a``, ``h`` (m,): the process coefficients used.
    """

    log_norm: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor | None
    a: torch.Tensor
    h: torch.Tensor


def posterior_moments(
    x: torch.Tensor,
    train: torch.Tensor,
    process: ScalarProcess,
    t,
    weights: torch.Tensor | None = None,
    need_cov: bool = True,
    chunk: int = 1024,
    query_chunk: int = 4096,
    dtype: torch.dtype = torch.float64,
) -> PosteriorMoments:
    """Posterior weights g_i(x) and their first two moments, streamed over training chunks.

    x: (m, d) queries; train: (n, d); weights: (n,) non-negative (normalised here) or None (uniform).
    """
    if x.ndim != 2 or train.ndim != 2 or x.shape[1] != train.shape[1]:
        raise ValueError(f"need x (m, d) and train (n, d); got {tuple(x.shape)} and {tuple(train.shape)}")
    m, d = x.shape
    n = train.shape[0]
    dev = x.device
    xq = x.to(dtype)
    tr = train.to(dev, dtype)
    # Centre the training set: covariances are translation invariant and the uncentred second
    # moment loses fewer digits when |x_i| is small.
    centre = tr.mean(0)
    tr = tr - centre
    if weights is None:
        logw = torch.full((n,), -math.log(n), dtype=dtype, device=dev)
    else:
        if weights.shape != (n,) or bool((weights < 0).any()):
            raise ValueError(f"weights must be non-negative with shape ({n},), got {tuple(weights.shape)}")
        w = weights.to(dev, dtype)
        logw = torch.log(w / w.sum())
    a_all, h_all = _coefficients(process, t, m, dtype, dev)
    sq_norm_tr = (tr * tr).sum(1)

    log_norm = torch.empty(m, dtype=dtype, device=dev)
    mean = torch.empty(m, d, dtype=dtype, device=dev)
    cov = torch.empty(m, d, d, dtype=dtype, device=dev) if need_cov else None
    for q0 in range(0, m, query_chunk):
        q1 = min(q0 + query_chunk, m)
        a, h = a_all[q0:q1, None], h_all[q0:q1, None]
        y = xq[q0:q1] - a * centre  # query in centred coordinates
        sq_y = (y * y).sum(1, keepdim=True)
        run_max = torch.full((q1 - q0, 1), -math.inf, dtype=dtype, device=dev)
        s0 = torch.zeros(q1 - q0, 1, dtype=dtype, device=dev)
        s1 = torch.zeros(q1 - q0, d, dtype=dtype, device=dev)
        s2 = torch.zeros(q1 - q0, d * d, dtype=dtype, device=dev) if need_cov else None
        for c0 in range(0, n, chunk):
            c1 = min(c0 + chunk, n)
            xi = tr[c0:c1]
            logits = logw[c0:c1] - (sq_y - 2 * a * (y @ xi.T) + a * a * sq_norm_tr[c0:c1]) / (2 * h)
            new_max = torch.maximum(run_max, logits.max(1, keepdim=True).values)
            scale = torch.exp(run_max - new_max)
            e = torch.exp(logits - new_max)
            s0 = s0 * scale + e.sum(1, keepdim=True)
            s1 = s1 * scale + e @ xi
            if need_cov:
                s2 = s2 * scale + e @ (xi[:, :, None] * xi[:, None, :]).reshape(c1 - c0, d * d)
            run_max = new_max
        log_norm[q0:q1] = (run_max + torch.log(s0)).squeeze(1)
        mu = s1 / s0
        mean[q0:q1] = mu + centre
        if need_cov:
            second = (s2 / s0).reshape(-1, d, d)
            c = second - mu[:, :, None] * mu[:, None, :]
            cov[q0:q1] = 0.5 * (c + c.transpose(1, 2))
    return PosteriorMoments(log_norm, mean, cov, a_all, h_all)


def empirical_log_density(x, train, process, t, weights=None, **kw) -> torch.Tensor:
    """log p_t(x), shape (m,): log sum_i w_i N(x; a x_i, h I)."""
    mom = posterior_moments(x, train, process, t, weights, need_cov=False, **kw)
    d = x.shape[1]
    return mom.log_norm - 0.5 * d * torch.log(2 * math.pi * mom.h)


def empirical_score(x, train, process, t, weights=None, **kw) -> torch.Tensor:
    """grad log p_t(x) = (a_t mu(x) - x) / h_t, shape (m, d), in the dtype of the computation."""
    mom = posterior_moments(x, train, process, t, weights, need_cov=False, **kw)
    return (mom.a[:, None] * mom.mean - x.to(mom.mean.dtype)) / mom.h[:, None]


@dataclass
class RidgeGeometry:
    """Local ridge geometry of p_t at queries x (m, d) for a ridge of dimension ``d_star``.

    ``score`` (m, d); ``hessian`` (m, d, d); ``eigenvalues`` (m, d) ascending with matching
    ``eigenvectors`` (m, d, d) in columns; ``h`` (m,) the kernel variance.
    """

    score: torch.Tensor
    hessian: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    d_star: int
    h: torch.Tensor

    @property
    def normal_dim(self) -> int:
        return self.score.shape[1] - self.d_star

    @property
    def normal_basis(self) -> torch.Tensor:
        """E: (m, d, d - d*), eigenvectors of the d - d* smallest eigenvalues."""
        return self.eigenvectors[:, :, : self.normal_dim]

    def normal_component(self, v: torch.Tensor) -> torch.Tensor:
        """E E^T v for v (m, d)."""
        E = self.normal_basis
        v = v.to(E.dtype)
        return torch.einsum("mdk,mk->md", E, torch.einsum("mdk,md->mk", E, v))

    def tangent_component(self, v: torch.Tensor) -> torch.Tensor:
        """(I - E E^T) v for v (m, d)."""
        return v.to(self.eigenvectors.dtype) - self.normal_component(v)

    @property
    def eigengap(self) -> torch.Tensor:
        """lambda_{d-d*+1} - lambda_{d-d*} (ascending, 1-based): the gap at the normal/tangent split, (m,)."""
        k = self.normal_dim
        return self.eigenvalues[:, k] - self.eigenvalues[:, k - 1]

    @property
    def relative_eigengap(self) -> torch.Tensor:
        """Eigengap in units of 1/h_t (the scale of the Hessian), (m,)."""
        return self.eigengap * self.h

    @property
    def normal_score_norm(self) -> torch.Tensor:
        """|E E^T grad log p_t|, (m,): the distance-to-ridge proxy of the paper."""
        return self.normal_component(self.score).norm(dim=1)

    @property
    def normalized_normal_score(self) -> torch.Tensor:
        """|E E^T grad log p_t| / |grad log p_t| in [0, 1], (m,).

        The denominator is floored at 1e-6 / sqrt(h_t) so that critical points (score ~ 1e-16, e.g.
        the midpoint of two points) count as on the ridge instead of giving rounding noise / noise.
        """
        floor = 1e-6 / self.h.sqrt()
        return self.normal_score_norm / torch.maximum(self.score.norm(dim=1), floor)

    def on_ridge(self, tol: float = 1e-3) -> torch.Tensor:
        """(m,) bool: normalised normal score <= tol and the normal eigenvalues are negative."""
        concave = (self.eigenvalues[:, : self.normal_dim] < 0).all(1)
        return (self.normalized_normal_score <= tol) & concave


def ridge_geometry(x, train, process, t, d_star: int, weights=None, **kw) -> RidgeGeometry:
    """Score, Hessian and its eigen-decomposition at x (m, d); see the module docstring."""
    d = x.shape[1]
    if not 0 < d_star < d:
        raise ValueError(f"ridge dimension d_star must satisfy 0 < d_star < d = {d}, got {d_star}")
    mom = posterior_moments(x, train, process, t, weights, need_cov=True, **kw)
    a, h = mom.a[:, None], mom.h[:, None]
    score = (a * mom.mean - x.to(mom.mean.dtype)) / h
    eye = torch.eye(d, dtype=score.dtype, device=score.device)
    hess = (a * a / (h * h))[:, :, None] * mom.cov - eye / h[:, :, None]
    evals, evecs = torch.linalg.eigh(hess)
    return RidgeGeometry(score, hess, evals, evecs, d_star, mom.h)


@dataclass
class RidgeProjection:
    """Result of :func:`project_to_ridge`: ``x`` (m, d) projected points, ``offset`` (m,) = |x0 - x|,
    ``converged`` (m,) bool, ``iterations`` run, ``geometry`` at the projected points."""

    x: torch.Tensor
    offset: torch.Tensor
    converged: torch.Tensor
    iterations: int
    geometry: RidgeGeometry


def project_to_ridge(
    x: torch.Tensor,
    train: torch.Tensor,
    process: ScalarProcess,
    t,
    d_star: int,
    weights: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    **kw,
) -> RidgeProjection:
    """Subspace-constrained mean shift (Ozertem & Erdogmus 2011) on log p_t.

    x <- x + E E^T (a_t mu(x) - x) = x + h_t E E^T grad log p_t(x): the mean-shift step restricted
    to the normal space. A fixed point has E^T grad log p_t = 0, i.e. lies on the ridge. Only the
    points not yet converged (normalised normal score > tol) are updated. x: (m, d); t scalar.
    """
    x0 = x.detach().to(torch.float64)
    cur = x0.clone()
    active = torch.ones(len(cur), dtype=torch.bool, device=cur.device)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (reported after the loop)
        idx = active.nonzero().squeeze(1)
        t_sub = t if torch.as_tensor(t).ndim == 0 else torch.as_tensor(t)[idx]
        geo = ridge_geometry(cur[idx], train, process, t_sub, d_star, weights, **kw)
        done = geo.normalized_normal_score <= tol
        step = geo.h[:, None] * geo.normal_component(geo.score)
        cur[idx] = cur[idx] + torch.where(done[:, None], torch.zeros_like(step), step)
        active[idx[done]] = False
        if not bool(active.any()):
            break
    geo = ridge_geometry(cur, train, process, t, d_star, weights, **kw)
    converged = geo.normalized_normal_score <= tol
    return RidgeProjection(cur, (cur - x0).norm(dim=1), converged, it, geo)


def nearest_neighbour_spacing(train: torch.Tensor, max_points: int = 4000) -> float:
    """Median distance from each training point to its nearest other point (first ``max_points``)."""
    pts = train[:max_points].to(torch.float64)
    dist = torch.cdist(pts, pts)
    dist.fill_diagonal_(math.inf)
    return float(dist.min(1).values.median())


def time_for_noise_to_signal(
    process: ScalarProcess, ratio: float, t_lo: float = 1e-6, t_hi: float = 50.0
) -> float:
    """The time t with sqrt(h_t) / a_t = ratio (bisection on a monotone function).

    The kernel width relative to the scaled points a_t x_i is sqrt(h_t)/a_t; docs/methods/ridge_phases.md asks for
    a ridge time where it is comparable to the nearest-neighbour spacing of the data.
    """
    if ratio <= 0:
        raise ValueError(f"noise-to-signal ratio must be positive, got {ratio}")

    def nsr(t: float) -> float:
        return float(
            process.sigma(torch.tensor(t, dtype=torch.float64))
            / process.alpha(torch.tensor(t, dtype=torch.float64))
        )

    lo, hi = t_lo, t_hi
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if nsr(mid) < ratio:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def unique_with_weights(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse repeated training points (Dirac modes) into (points (k, d), weights (k,))."""
    pts, counts = torch.unique(train, dim=0, return_counts=True)
    return pts, counts.to(torch.float64) / counts.sum()
