"""Hessian tools for edge-of-stability measurements (docs/methods/eos_variational.md).

* ``HessianOperator``: v -> H v for a scalar loss of a list of parameters, by double backward
  (Pearlmutter): H v = d/dp (grad L(p) . v). The loss is a closure over a fixed probe set (fixed noise
  and times for diffusion losses), so every product is of the same matrix. ``torch.autograd.grad`` is
  used throughout: ``.grad`` and the model's train/eval mode are never touched. Autocast is disabled and
  the math attention backend forced (flash/efficient kernels have no double backward), so products are
  in the parameters' dtype (float32/float64) even inside a bf16 trainer.
* ``lanczos_top_eigen``: top-k eigenpairs by Lanczos with full reorthogonalisation, warm-startable from
  the previous top eigenvector; ``power_iteration``: the reference method; ``hutchinson_trace``.
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
    """eigenvalues (k,) descending, eigenvectors (dim, k) orthonormal, n_matvec products used."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    n_matvec: int
    converged: bool


def lanczos_top_eigen(matvec: MatVec, dim: int, k: int = 1, v0: Tensor | None = None, rtol: float = 1e-3,
                      max_iter: int = 200, generator: torch.Generator | None = None) -> EigenResult:
    """Top-k (algebraically largest) eigenpairs of a symmetric operator by Lanczos.

    Full reorthogonalisation (the basis is small). Stops when the top-k Ritz values moved by at most
    rtol |theta| in the last iteration and their residual bound beta_j |s_{j,i}| is at most
    sqrt(rtol) |theta| (eigenvalue error ~ residual^2 / gap, so this gives ~rtol accuracy).
    v0: warm start (e.g. the previous top eigenvector); a random start otherwise.
    Recurrences in float64; products in the operator's dtype.
    """
    if not 1 <= k <= dim:
        raise ValueError(f"lanczos_top_eigen: need 1 <= k <= dim, got k={k}, dim={dim}")
    q = (torch.randn(dim, generator=generator, dtype=torch.float64) if v0 is None
         else v0.detach().to("cpu", torch.float64).reshape(-1).clone())
    if q.shape != (dim,):
        raise ValueError(f"lanczos_top_eigen: v0 must have {dim} elements, got {q.numel()}")
    q /= q.norm()
    basis, alphas, betas = [q], [], []
    prev_top, n = None, 0
    theta, s = None, None
    converged = False
    for j in range(min(max_iter, dim)):
        w0 = matvec(basis[j])
        w = w0.detach().to("cpu", torch.float64)
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
        if m == k and prev_top is not None and len(prev_top) == k:
            moved = (top - prev_top).abs()
            if bool(torch.all(moved <= rtol * scale) and torch.all(resid <= math.sqrt(rtol) * scale)):
                converged = True
                break
        prev_top = top
        if beta <= 1e-12 * max(1.0, float(theta.abs().max())):  # invariant subspace found: exact
            converged = len(alphas) >= k
            break
        betas.append(beta)
        basis.append(w / beta)
    m = min(k, len(alphas))
    Q = torch.stack(basis[:len(alphas)], 1)
    vecs = Q @ s[:, -m:]
    order = torch.arange(m - 1, -1, -1)
    return EigenResult(theta[-m:][order], vecs[:, order], n, converged)


def power_iteration(matvec: MatVec, dim: int, v0: Tensor | None = None, rtol: float = 1e-3,
                    max_iter: int = 1000, generator: torch.Generator | None = None) -> EigenResult:
    """Largest-magnitude eigenpair by power iteration; stops when the Rayleigh quotient moves <= rtol."""
    v = (torch.randn(dim, generator=generator, dtype=torch.float64) if v0 is None
         else v0.detach().to("cpu", torch.float64).reshape(-1).clone())
    v /= v.norm()
    lam, n, converged = None, 0, False
    for _ in range(max_iter):
        w = matvec(v).detach().to("cpu", torch.float64)
        n += 1
        new = float(v @ w)
        norm = w.norm()
        if norm == 0:
            lam, converged = 0.0, True
            break
        v = w / norm
        if lam is not None and abs(new - lam) <= rtol * abs(new):
            lam, converged = new, True
            break
        lam = new
    return EigenResult(torch.tensor([lam], dtype=torch.float64), v[:, None], n, converged)


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
