"""Hessian tools for edge-of-stability measurements (docs/methods/eos_variational.md).

* ``HessianOperator``: v -> H v for a scalar loss of a list of parameters, by double backward
  (Pearlmutter): H v = d/dp (grad L(p) . v). The loss is a closure over a fixed probe set (fixed noise
  and times for diffusion losses), so every product is of the same matrix. ``torch.autograd.grad`` is
  used throughout: ``.grad`` and the model's train/eval mode are never touched. Autocast is disabled and
  the math attention backend forced (flash/efficient kernels have no double backward), so products are
  in the parameters' dtype (float32/float64) even inside a bf16 trainer.
* ``lanczos_top_eigen``: top-k eigenpairs by Lanczos with full reorthogonalisation, each with its Ritz
  residual as an error bar, stopped by that residual (no eigengap needed), warm-startable from the
  previous top eigenvector mixed with a fresh random direction; ``power_iteration``: the reference
  method; ``hutchinson_trace``.
* ``preconditioned_matvec`` + ``adam_preconditioner`` / ``ivon_preconditioner``: the preconditioned
  sharpness lambda_max(P^-1 H) = lambda_max(P^-1/2 H P^-1/2) of adaptive optimisers, whose stability
  threshold is (2 + 2 b1) / ((1 - b1) lr) (Cohen et al. 2022, "adaptive EoS").
* ``critical_sharpness``: H_crit of variational GD, the root of H (1 + H^2 sigma^2 / (N_s |g|^2)) = 2/lr.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


def _math_attention():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # older torch: nothing to force
        return contextlib.nullcontext()


class HessianOperator:
    """H of ``loss_fn()`` w.r.t. ``params`` as a matrix-free operator on flat vectors (dim,).

    The gradient graph is built once (lazily) and kept, so each product is one backward through it;
    ``n_products`` counts Hessian-vector products, ``gradient()`` returns grad L (dim,) without a product.
    """

    def __init__(self, loss_fn: Callable[[], Tensor], params: Sequence[Tensor]):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("HessianOperator: no parameter requires grad")
        self.loss_fn = loss_fn
        self.dim = sum(p.numel() for p in self.params)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.n_products = 0
        self._grads: tuple[Tensor, ...] | None = None

    def _build(self) -> tuple[Tensor, ...]:
        if self._grads is None:
            autocast_off = torch.autocast(device_type=self.device.type, enabled=False)
            with torch.enable_grad(), autocast_off, _math_attention():
                loss = self.loss_fn()
                if loss.dim() != 0:
                    raise ValueError(f"HessianOperator: loss_fn must return a scalar, got shape {tuple(loss.shape)}")
                self.loss = loss.detach()
                self._grads = torch.autograd.grad(loss, self.params, create_graph=True)
        return self._grads

    def gradient(self) -> Tensor:
        """grad L at the current parameters, flat (dim,)."""
        return torch.cat([g.detach().reshape(-1) for g in self._build()])

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat v (dim,) -> (dim,)."""
        if v.shape != (self.dim,):
            raise ValueError(f"HessianOperator.matvec: expected shape ({self.dim},), got {tuple(v.shape)}")
        grads = self._build()
        v = v.to(device=self.device, dtype=self.dtype)
        chunks, off = [], 0
        for p in self.params:
            chunks.append(v[off:off + p.numel()].view_as(p))
            off += p.numel()
        with torch.enable_grad():
            hv = torch.autograd.grad(grads, self.params, grad_outputs=chunks, retain_graph=True,
                                     allow_unused=True)
        self.n_products += 1
        return torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1)
                          for h, p in zip(hv, self.params)]).detach()

    __call__ = matvec


@dataclass
class EigenResult:
    """eigenvalues (k,) descending, eigenvectors (dim, k) orthonormal, n_matvec products used,
    converged per the stopping rule, residuals (k,) = ||H v_i - lambda_i v_i||: each estimate's error
    bar (some eigenvalue of a symmetric H lies within residuals[i] of eigenvalues[i])."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    n_matvec: int
    converged: bool
    residuals: Tensor


STOP_RULES = ("residual", "ritz_change")


def _start_vector(dim: int, v0: Tensor | None, warm_mix: float, generator: torch.Generator | None) -> Tensor:
    """Unit start vector: a Gaussian direction z/|z|, or v0/|v0| + warm_mix z/|z| for a warm start."""
    z = torch.randn(dim, generator=generator, dtype=torch.float64)
    q = z / z.norm()
    if v0 is not None:
        if v0.numel() != dim:
            raise ValueError(f"lanczos_top_eigen: v0 must have {dim} elements, got {v0.numel()}")
        w = v0.detach().to("cpu", torch.float64).reshape(-1)
        if not bool(torch.isfinite(w).all()) or float(w.norm()) == 0.0:
            raise ValueError("lanczos_top_eigen: v0 must be finite and nonzero")
        q = w / w.norm() + warm_mix * q
    return q / q.norm()


def lanczos_top_eigen(matvec: MatVec, dim: int, k: int = 1, v0: Tensor | None = None, rtol: float = 1e-3,
                      max_iter: int = 200, generator: torch.Generator | None = None, stop: str = "residual",
                      warm_mix: float = 1.0, safety: float = 0.01) -> EigenResult:
    """Top-k (algebraically largest) eigenpairs of a symmetric operator by Lanczos, with error bars.

    Lanczos builds an orthonormal basis Q_j = [q_1..q_j] of the Krylov space span{q_1, H q_1, ..,
    H^{j-1} q_1} with H Q_j = Q_j T_j + beta_j q_{j+1} e_j^T, T_j tridiagonal (alphas on the diagonal,
    betas beside it); full reorthogonalisation (twice, Kahan-Parlett) keeps Q_j orthonormal. A Ritz pair
    (theta_i, y_i = Q_j s_i), T_j s_i = theta_i s_i, then has H y_i - theta_i y_i = beta_j s_{j,i} q_{j+1},
    so its residual r_i = ||H y_i - theta_i y_i|| = beta_j |s_{j,i}| (s_{j,i}: last component of s_i)
    costs no product. What the numbers guarantee, for symmetric H:

    * theta_1 <= lambda_max: theta_1 is the largest Rayleigh quotient over the Krylov space (Ritz values
      interlace the eigenvalues), a lower bound.
    * some eigenvalue lambda of H has |lambda - theta_i| <= r_i (the smallest |eigenvalue| of H - theta_i I
      is at most ||(H - theta_i I) y_i||). So if that eigenvalue is the largest, lambda_max lies in
      [theta_1, theta_1 + r_1]. The residual does NOT prove that no eigenvalue lies above theta_1 + r_1:
      an eigenvector the start vector (almost) misses stays invisible to any Krylov method. A random
      start has an overlap with v_1 as large as with any other direction, which makes that improbable,
      not impossible (tests/core/optim/test_lanczos_clustered.py measures the rate on clustered spectra).
      With the rest of the spectrum at distance >= g from theta_i the error is <= r_i^2 / g, but g is
      unknown, so it is not used.

    stop="residual" (default): converged when r_i <= safety rtol |theta_i| for all top-k pairs, a test
    that needs no eigengap. Why the margin ``safety`` (0.01): a Krylov method misses v_1 when the start's
    overlap c_1 with it is small next to the overlap c_2 with an eigenvector v_2 at relative gap delta
    below: the Ritz vector is then ~ v_2 + a v_1 with a ~ c_1/c_2, residual ~ |a| delta |theta|, error
    ~ delta. For a random start c_1/c_2 is a ratio of independent normals, P(|c_1/c_2| < t) ~ (2/pi) t,
    so the rule stops wrongly with probability <~ (2/pi) safety rtol / delta (Lanczos' own amplification
    of v_1 over v_2 only lowers it); an error above rtol needs delta > rtol, so at safety = 0.01 that is
    < 0.7% whatever the gap (measured on gaps 40%, 5%, 1% and a repeated top eigenvalue in
    tests/core/optim/test_lanczos_clustered.py). The returned r_1 is the error bar, far below rtol |theta|.
    stop="ritz_change" is the rule used before issue 23 (top-k Ritz values moved by <= rtol |theta| in
    one iteration and r_i <= sqrt(rtol) |theta_i|, ``safety`` unused): on clustered spectra theta_1
    stalls between lambda_2 and lambda_1 and the rule stops there; it is kept only for the comparison in
    benchmarks/sharpness.py. With k > 1 and a repeated eigenvalue a single Krylov space holds one vector
    of its eigenspace, so the copies after the first are missed.

    v0: warm start (e.g. the previous top eigenvector), mixed with a fresh Gaussian direction z drawn
    from ``generator``: q_1 ~ v0/|v0| + warm_mix z/|z|. Unmixed, a v0 that is an eigenvector v_2 ends the
    iteration after one product on an invariant subspace (converged, lambda_2); mixed, v_1 is in the
    start, but only with weight ~ warm_mix / sqrt(dim) where v_2 has ~ 1, so after an exact swap of the
    top two eigenvectors a stop at lambda_2 stays likelier than from a cold start, and grows with the
    dimension (benchmarks/sharpness.py prints the rate). A random start without v0 (the safe choice).
    Recurrences in float64; products in the operator's dtype.
    Returns EigenResult with ``residuals`` the r_i of the returned pairs (also when not converged).
    """
    if not 1 <= k <= dim:
        raise ValueError(f"lanczos_top_eigen: need 1 <= k <= dim, got k={k}, dim={dim}")
    if stop not in STOP_RULES:
        raise ValueError(f"lanczos_top_eigen: stop must be one of {STOP_RULES}, got {stop!r}")
    if not rtol > 0 or not warm_mix >= 0 or not 0 < safety <= 1:
        raise ValueError("lanczos_top_eigen: need rtol > 0, warm_mix >= 0 and 0 < safety <= 1, got "
                         f"rtol={rtol}, warm_mix={warm_mix}, safety={safety}")
    basis, alphas, betas = [_start_vector(dim, v0, warm_mix, generator)], [], []
    prev_top, n = None, 0
    theta, s, resid = None, None, None
    converged = False
    for j in range(min(max_iter, dim)):
        w = matvec(basis[j]).detach().to("cpu", torch.float64)
        n += 1
        alphas.append(float(w @ basis[j]))
        Q = torch.stack(basis, 1)
        for _ in range(2):  # twice is enough (Kahan-Parlett)
            w -= Q @ (Q.T @ w)
        beta = float(w.norm())
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(T)
        m = min(k, len(alphas))
        top = theta[-m:]
        resid = beta * s[-1, -m:].abs()
        scale = top.abs().clamp_min(1e-30)
        if beta <= 1e-12 * max(1.0, float(theta.abs().max())):  # invariant subspace found: exact
            converged = len(alphas) >= k
            break
        if m == k and stop == "residual" and bool(torch.all(resid <= safety * rtol * scale)):
            converged = True
            break
        if m == k and stop == "ritz_change" and prev_top is not None:
            if bool(torch.all((top - prev_top).abs() <= rtol * scale)
                    and torch.all(resid <= math.sqrt(rtol) * scale)):
                converged = True
                break
        prev_top = top
        betas.append(beta)
        basis.append(w / beta)
    m = min(k, len(alphas))
    Q = torch.stack(basis[:len(alphas)], 1)
    vecs = Q @ s[:, -m:]
    order = torch.arange(m - 1, -1, -1)
    return EigenResult(theta[-m:][order], vecs[:, order], n, converged, resid[order])


def power_iteration(matvec: MatVec, dim: int, v0: Tensor | None = None, rtol: float = 1e-3,
                    max_iter: int = 1000, generator: torch.Generator | None = None) -> EigenResult:
    """Largest-magnitude eigenpair by power iteration; stops when the Rayleigh quotient moves <= rtol.

    ``residuals`` holds ||H v - lam v|| of the iterate v whose Rayleigh quotient lam is returned (the
    returned vector is the next iterate H v / |H v|)."""
    v = (torch.randn(dim, generator=generator, dtype=torch.float64) if v0 is None
         else v0.detach().to("cpu", torch.float64).reshape(-1).clone())
    v /= v.norm()
    lam, n, converged, resid = None, 0, False, float("nan")
    for _ in range(max_iter):
        w = matvec(v).detach().to("cpu", torch.float64)
        n += 1
        new = float(v @ w)
        norm = w.norm()
        if norm == 0:
            lam, converged, resid = 0.0, True, 0.0
            break
        resid = float((w - new * v).norm())
        v = w / norm
        if lam is not None and abs(new - lam) <= rtol * abs(new):
            lam, converged = new, True
            break
        lam = new
    return EigenResult(torch.tensor([lam], dtype=torch.float64), v[:, None], n, converged,
                       torch.tensor([resid], dtype=torch.float64))


def hutchinson_trace(matvec: MatVec, dim: int, n_probes: int = 10,
                     generator: torch.Generator | None = None) -> tuple[float, float]:
    """tr(H) ~ mean_i z_i^T H z_i with Rademacher z_i; returns (estimate, standard error)."""
    vals = []
    for _ in range(n_probes):
        z = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int64).to(torch.float64) * 2 - 1
        vals.append(float(z @ matvec(z).detach().to("cpu", torch.float64)))
    t = torch.tensor(vals, dtype=torch.float64)
    se = float(t.std() / math.sqrt(n_probes)) if n_probes > 1 else float("nan")
    return float(t.mean()), se


def preconditioned_matvec(matvec: MatVec, precond: Tensor) -> MatVec:
    """x -> P^-1/2 H P^-1/2 x for a positive diagonal P (dim,): same spectrum as P^-1 H, symmetric."""
    if bool((precond <= 0).any()):
        raise ValueError("preconditioned_matvec: the diagonal preconditioner must be positive")
    d = precond.detach().to("cpu", torch.float64).rsqrt()
    return lambda x: d * matvec(d * x.to(torch.float64)).detach().to("cpu", torch.float64)


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> Tensor | None:
    """Adam/AdamW's P = sqrt(v / (1 - b2^t)) + eps (flat), the update being lr m_hat / P; None before step 1."""
    out = []
    for group in optimizer.param_groups:
        b2, eps = group["betas"][1], group["eps"]
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "exp_avg_sq" not in st:
                return None
            t = float(st["step"])
            out.append(((st["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + eps).reshape(-1))
    return _reorder(optimizer, params, out)


def ivon_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> Tensor:
    """IVON's P = (h + delta) / (h0 + delta) (flat): the update is lr mu_hat / P with rescale_lr."""
    out = []
    for group in optimizer.param_groups:
        wd, h0 = group["weight_decay"], group["hess_init"]
        for p in group["params"]:
            out.append(((optimizer.state[p]["hess"] + wd) / (h0 + wd)).reshape(-1))
    return _reorder(optimizer, params, out)


def _reorder(optimizer, params, flat_per_param: list[Tensor]) -> Tensor:
    """Concatenate per-parameter diagonals in the order of ``params`` (the operator's order)."""
    order = [p for g in optimizer.param_groups for p in g["params"]]
    lookup = {id(p): v for p, v in zip(order, flat_per_param)}
    missing = [i for i, p in enumerate(params) if id(p) not in lookup]
    if missing:
        raise ValueError(f"preconditioner: parameters at positions {missing} are not in the optimizer")
    return torch.cat([lookup[id(p)] for p in params])


def critical_sharpness(lr: float, sigma_sq: float, n_samples: int, grad_sq: float) -> float:
    """H_crit of variational GD (docs/methods/eos_variational.md): the real root of H + H^3 / z = 2 / lr,
    z = N_s |g|^2 / sigma^2, i.e. H_crit = 2 sqrt(z/3) sinh(asinh((3/lr) sqrt(3/z)) / 3).

    From one step on f = H x^2 / 2 with g = H x: E f(x') <= f(x) iff H (1 + H^2 sigma^2 / (N_s g^2)) <= 2/lr.
    sigma^2 -> 0 or N_s |g|^2 -> inf gives 2/lr; |g| -> 0 gives 0.
    """
    if lr <= 0 or sigma_sq < 0 or n_samples < 1 or grad_sq < 0:
        raise ValueError(f"critical_sharpness: need lr>0, sigma_sq>=0, n_samples>=1, grad_sq>=0; got "
                         f"lr={lr}, sigma_sq={sigma_sq}, n_samples={n_samples}, grad_sq={grad_sq}")
    if sigma_sq == 0:
        return 2.0 / lr
    z = n_samples * grad_sq / sigma_sq
    if z == 0:
        return 0.0
    return 2.0 * math.sqrt(z / 3.0) * math.sinh(math.asinh((3.0 / lr) * math.sqrt(3.0 / z)) / 3.0)
