"""Linear (phase-space) diffusions with closed-form Gaussian kernels: VP, CLD, VSDM and VSMD.

Every process here is a linear SDE whose coefficients are one time profile beta(t) times constant
matrices, so that with B(t) = int_0^t beta (the "integrated time") its transition over [s, t] is

    u_t | u_s ~ N(Phi u_s, Q),  Phi = expm((B(t) - B(s)) F),  Q = Sigma_inf - Phi Sigma_inf Phi^T,

where ``Sigma_inf`` is the stationary covariance (F Sigma_inf + Sigma_inf F^T + Q0 = 0). Only Phi
needs ``torch.linalg.matrix_exp``; the stationary form of Q avoids Van Loan's exp(+F) block, which
loses all precision for stiff directions. Time runs from data (t = 0) to noise (t = T).

The four processes (``order`` 1 = overdamped state x; ``order`` 2 = phase space u = (x, v)):

* VP (order 1, D = I):     dx = -1/2 beta(t) D x dt + sqrt(beta(t)) dW
* VSDM (order 1, learned D): the same with D = I - 2A, A the "variational score" (Deng et al. 2024:
  forward drift -1/2 beta (I - 2A) x).
* CLD (order 2, D = I, Dockhorn et al. 2022):
      dx = M^{-1} v beta dt,  dv = (-D x - Gamma M^{-1} v) beta dt + sqrt(2 Gamma beta) dW,
  critical damping Gamma^2 = 4M, x0 ~ data, v0 ~ N(0, gamma M I).
* VSMD (order 2, learned D): the CLD equations with stiffness D = I - 2A and the critical-damping
  transform Gamma(A) = 2 sqrt(M) D^{1/2}, noise sqrt(2 Gamma(A) beta) dW on v only.

VSMD reconstruction choices (the paper, arXiv 2501.16675, has no public code; these are ours):

1. The variational score enters the momentum process as a learned linear *force*: the velocity
   equation's stiffness becomes D = I - 2A (A = 0 gives CLD exactly, as A = 0 gives VP in VSDM).
2. A is symmetric and time-invariant (VSDM's public code ships the time-invariant version too):
   D = U diag(lam) U^T with U = expm(S - S^T) orthogonal and lam = exp(rho) clipped to
   [lam_min, lam_max], so D stays positive definite and the process stays stable.
3. Critical-damping transform: friction Gamma(A) = 2 sqrt(M) D^{1/2} and noise covariance 2 Gamma(A)
   beta on v. Every matrix is then a function of D, so in D's eigenbasis (y = U^T x, w = U^T v)
   the process splits into d independent oscillators, each critically damped
   (Gamma_i^2 = 4 M lam_i) and each with stationary law N(0, diag(1/lam_i, M)). Noise enters v
   only, so a single network output, the velocity score grad_v log p_t, suffices (hybrid score
   matching), as in CLD.
4. Kernels are computed per eigen-direction with 2x2 (order 2) or 1x1 (order 1) matrix
   exponentials; ``kernel(t).cov`` assembles the full (k d, k d) covariance in the original basis.
5. The terminal law used for sampling is the x0-free part of the kernel at T,
   N(0, Phi_T Sigma_0 Phi_T^T + Q_T); the residual Phi_T x0 is the mismatch A learns to remove.
6. A is updated by stochastic approximation on backward trajectories with the forward half of
   iterative proportional fitting: maximise the log-likelihood of backward (generated) trajectories
   under the forward transitions N(Phi(A) u_k, Q(A)) (``variational_objective``), i.e. the forward
   process closest in path-KL to the learned backward process that starts from the prior. Score
   training and A updates alternate (see modules/momentum_diffusion.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.diffusion.processes import integrated_linear_beta, linear_beta

TimeLike = torch.Tensor | float
_F64 = torch.float64


def _t(t: TimeLike) -> torch.Tensor:
    t = t if isinstance(t, torch.Tensor) else torch.tensor(float(t))
    return t.to(_F64).reshape(-1)


class Stiffness(nn.Module):
    """Learned symmetric stiffness D = U diag(lam) U^T = I - 2A (the variational score A).

    ``log_lam`` (d,) and ``skew`` (d, d) start at zero, i.e. D = I, A = 0 (VP / CLD)."""

    def __init__(self, dim: int, lam_min: float = 0.1, lam_max: float = 25.0) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"Stiffness dim must be >= 1, got {dim}")
        self.dim, self.lam_min, self.lam_max = dim, lam_min, lam_max
        self.log_lam = nn.Parameter(torch.zeros(dim))
        self.skew = nn.Parameter(torch.zeros(dim, dim))

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lam (d,), U (d, d)) in float64, differentiable."""
        lam = self.log_lam.to(_F64).exp().clamp(self.lam_min, self.lam_max)
        s = self.skew.to(_F64)
        return lam, torch.linalg.matrix_exp(s - s.T)

    def D(self) -> torch.Tensor:
        lam, U = self.eig()
        return U @ torch.diag(lam) @ U.T

    def A(self) -> torch.Tensor:
        """A = (I - D) / 2, the variational score's matrix."""
        return 0.5 * (torch.eye(self.dim, dtype=_F64) - self.D())


@dataclass
class PhaseSpaceKernel:
    """q(u_t | x0) at a batch of times, per eigen-direction of D.

    ``phi``, ``cov``, ``chol``: (B, d', k, k) float64 with d' = d (learned D) or 1 (D = I, broadcast);
    ``basis``: U (d, d) or None (identity); ``order`` k. States are a tensor (B, d) for k = 1 and a
    tuple (x, v) of (B, d) for k = 2, in the original basis."""

    phi: torch.Tensor
    cov_eig: torch.Tensor
    chol: torch.Tensor
    basis: torch.Tensor | None
    order: int

    def to_eig(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.basis is None else z @ self.basis.to(z.device, z.dtype)

    def from_eig(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.basis is None else z @ self.basis.T.to(z.device, z.dtype)

    def _pack(self, comps: list[torch.Tensor]):
        out = [self.from_eig(c) for c in comps]
        return out[0] if self.order == 1 else tuple(out)

    def mean(self, x0: torch.Tensor):
        """Phi (x0, 0): the v-part of the initial state has mean zero."""
        y0 = self.to_eig(x0).to(_F64)
        phi = self.phi.to(x0.device)
        return self._pack([(phi[..., i, 0] * y0).to(x0.dtype) for i in range(self.order)])

    @property
    def cov(self) -> torch.Tensor:
        """Full covariance (B, k d, k d) in the original basis, blocks ordered [x; v]."""
        B, dp, k, _ = self.cov_eig.shape
        d = dp if self.basis is None else self.basis.shape[0]
        U = torch.eye(d, dtype=_F64) if self.basis is None else self.basis.to(_F64)
        out = torch.zeros(B, k * d, k * d, dtype=_F64)
        for i in range(k):
            for j in range(k):
                c = self.cov_eig[..., i, j].expand(B, d)
                out[:, i * d : (i + 1) * d, j * d : (j + 1) * d] = torch.einsum("ab,nb,cb->nac", U, c, U)
        return out

    def sample(self, x0: torch.Tensor, generator: torch.Generator | None = None, eps=None):
        """Return (u_t, eps): u_t = Phi (x0, 0) + U L U^T eps, eps in the original basis.

        ``eps`` (same structure as the state) fixes the noise; for k = 2 the velocity score's
        target is eps[1] (see :meth:`score_from_eps`)."""
        if eps is None:
            draw = [torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
                    for _ in range(self.order)]
            eps = draw[0] if self.order == 1 else tuple(draw)
        parts = [eps] if self.order == 1 else list(eps)
        e = [self.to_eig(p).to(_F64) for p in parts]
        y0 = self.to_eig(x0).to(_F64)
        phi, chol = self.phi.to(x0.device), self.chol.to(x0.device)
        comps = []
        for i in range(self.order):
            z = phi[..., i, 0] * y0
            for j in range(i + 1):
                z = z + chol[..., i, j] * e[j]
            comps.append(z.to(x0.dtype))
        return self._pack(comps), eps

    def select(self, idx: torch.Tensor) -> PhaseSpaceKernel:
        """The kernel at a subset of its times (rows ``idx``), e.g. from a precomputed time grid."""
        return PhaseSpaceKernel(self.phi[idx], self.cov_eig[idx], self.chol[idx], self.basis, self.order)

    def score_from_eps(self, eps_last: torch.Tensor) -> torch.Tensor:
        """Score of the last component (x for k = 1, v for k = 2): -U diag(1/L_kk) U^T eps.

        L^{-T} is upper triangular, so the last component of -Sigma^{-1}(u - mean) = -L^{-T} eps
        only involves eps_last: this is why one network output suffices (hybrid score matching)."""
        k = self.order - 1
        inv = (1.0 / self.chol[..., k, k]).to(eps_last.device, eps_last.dtype)
        return -self.from_eig(inv * self.to_eig(eps_last))


class PhaseSpaceProcess:
    """VP / VSDM (``order=1``) and CLD / VSMD (``order=2``); D = I unless ``stiffness`` is given.

    beta(t) = beta_min + t (beta_max - beta_min) on [0, T]; ``mass`` M, ``init_velocity_var`` gamma
    (v0 ~ N(0, gamma M)); critical damping Gamma_i = 2 sqrt(M lam_i) (Gamma = 1 for M = 1/4, D = I)."""

    def __init__(
        self,
        order: int,
        beta_min: float,
        beta_max: float,
        T: float = 1.0,
        t_min: float = 1e-3,
        mass: float = 0.25,
        init_velocity_var: float = 0.04,
        stiffness: Stiffness | None = None,
    ) -> None:
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (overdamped) or 2 (phase space), got {order}")
        if beta_min <= 0 or beta_max <= 0 or mass <= 0:
            raise ValueError("beta_min, beta_max and mass must be positive")
        self.order, self.beta_min, self.beta_max, self.T, self.t_min = order, beta_min, beta_max, T, t_min
        self.mass, self.gamma, self.stiffness = mass, init_velocity_var, stiffness
        self._eig: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # --- D's eigen-decomposition -------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute the cached (detached) eigenbasis of D; call after every update of A."""
        if self.stiffness is None:
            self._eig = (torch.ones(1, dtype=_F64), None)
        else:
            with torch.no_grad():
                lam, U = self.stiffness.eig()
            self._eig = (lam.detach(), U.detach())

    def eig(self, live: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(lam (d',), U or None); ``live`` keeps the autograd graph to the stiffness parameters."""
        if live and self.stiffness is not None:
            return self.stiffness.eig()
        if self._eig is None:
            self.refresh()
        return self._eig

    # --- per-direction matrices (per unit of integrated time B) -------------------------------
    def integrated_beta(self, t: TimeLike) -> torch.Tensor:
        return integrated_linear_beta(_t(t), self.beta_min, self.beta_max, self.T)

    def beta(self, t: TimeLike) -> torch.Tensor:
        return linear_beta(_t(t), self.beta_min, self.beta_max, self.T)

    def damping(self, lam: torch.Tensor) -> torch.Tensor:
        """Critical damping Gamma_i = 2 sqrt(M lam_i)."""
        return 2.0 * torch.sqrt(self.mass * lam)

    def blocks(self, lam: torch.Tensor, kind: str = "forward") -> tuple[torch.Tensor, torch.Tensor]:
        """(F (d', k, k), Q0 (d', k, k)) per direction, per unit B; Sigma_inf is shared by all kinds.

        ``forward``: the SDE's drift. ``reverse_split``: linear part of the reverse SDE after taking
        out the reference score -Sigma_inf^{-1} u (SSCS of Dockhorn et al.). ``reverse_ode``: the
        same for the probability-flow ODE (no noise)."""
        n = lam.shape[0]
        F = torch.zeros(n, self.order, self.order, dtype=_F64)
        Q0 = torch.zeros_like(F)
        if self.order == 1:
            F[:, 0, 0] = {"forward": -0.5, "reverse_split": -0.5, "reverse_ode": 0.0}[kind] * lam
            Q0[:, 0, 0] = 0.0 if kind == "reverse_ode" else 1.0
            return F, Q0
        g, M = self.damping(lam), self.mass
        sign = 1.0 if kind == "forward" else -1.0
        F[:, 0, 1] = sign / M
        F[:, 1, 0] = -sign * lam
        F[:, 1, 1] = 0.0 if kind == "reverse_ode" else -g / M
        Q0[:, 1, 1] = 0.0 if kind == "reverse_ode" else 2.0 * g
        return F, Q0

    def stationary_cov(self, lam: torch.Tensor) -> torch.Tensor:
        """Sigma_inf (d', k, k): diag(1/lam) (k = 1) or diag(1/lam, M) (k = 2)."""
        S = torch.zeros(lam.shape[0], self.order, self.order, dtype=_F64)
        S[:, 0, 0] = 1.0 / lam
        if self.order == 2:
            S[:, 1, 1] = self.mass
        return S

    def initial_cov(self, lam: torch.Tensor) -> torch.Tensor:
        S0 = torch.zeros(lam.shape[0], self.order, self.order, dtype=_F64)
        if self.order == 2:
            S0[:, 1, 1] = self.gamma * self.mass
        return S0

    def transition(self, dB: torch.Tensor, lam: torch.Tensor, kind: str = "forward"):
        """(Phi, Q) of shape (N, d', k, k) over integrated-time increments dB (N,) >= 0."""
        F, Q0 = self.blocks(lam, kind)
        Phi = torch.linalg.matrix_exp(dB.to(_F64).reshape(-1, 1, 1, 1) * F)
        if kind == "reverse_ode":
            return Phi, torch.zeros_like(Phi)
        S = self.stationary_cov(lam)
        return Phi, S - Phi @ S @ Phi.transpose(-1, -2)

    # --- kernel, prior, SDE ---------------------------------------------------------------------
    def kernel(self, t: TimeLike, live: bool = False) -> PhaseSpaceKernel:
        """q(u_t | x0) for times t (scalar or (B,)): N(Phi (x0, 0), Phi Sigma_0 Phi^T + Q)."""
        lam, U = self.eig(live)
        Phi, Q = self.transition(self.integrated_beta(t), lam)
        cov = Phi @ self.initial_cov(lam) @ Phi.transpose(-1, -2) + Q
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        return PhaseSpaceKernel(Phi, cov, _chol(cov), U, self.order)

    def prior_sample(self, n: int, dim: int, generator: torch.Generator | None = None):
        """Draw from N(0, Phi_T Sigma_0 Phi_T^T + Q_T), the x0-free part of the kernel at T."""
        return self.kernel(self.T).sample(torch.zeros(n, dim), generator)[0]

    def sde_matrices(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Full (F0, G0) in the original basis, (k d, k d): du = beta(t) F0 u dt + sqrt(beta) G0 dW.

        Built from D and D^{1/2} as matrix functions (independently of the per-direction kernel
        code) for Euler-Maruyama checks."""
        lam, U = self.eig()
        lam = lam.expand(dim)
        U = torch.eye(dim, dtype=_F64) if U is None else U
        D = U @ torch.diag(lam) @ U.T
        I = torch.eye(dim, dtype=_F64)
        if self.order == 1:
            return -0.5 * D, I
        Gam = U @ torch.diag(self.damping(lam)) @ U.T
        sqrt2Gam = U @ torch.diag(torch.sqrt(2.0 * self.damping(lam))) @ U.T
        Z = torch.zeros(dim, dim, dtype=_F64)
        F0 = torch.cat([torch.cat([Z, I / self.mass], 1), torch.cat([-D, -Gam / self.mass], 1)], 0)
        G0 = torch.cat([torch.cat([Z, Z], 1), torch.cat([Z, sqrt2Gam], 1)], 0)
        return F0, G0


def _chol(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky of (..., k, k) with k <= 2 in closed form (robust when cov_xx ~ t^3 at small t)."""
    L = torch.zeros_like(cov)
    L[..., 0, 0] = cov[..., 0, 0].clamp_min(1e-30).sqrt()
    if cov.shape[-1] == 2:
        L[..., 1, 0] = cov[..., 1, 0] / L[..., 0, 0]
        L[..., 1, 1] = (cov[..., 1, 1] - L[..., 1, 0] ** 2).clamp_min(1e-30).sqrt()
    return L


def variational_objective(process: PhaseSpaceProcess, times: torch.Tensor, states: list) -> torch.Tensor:
    """Negative mean log-likelihood of backward trajectories under the forward transitions.

    ``times``: (K+1,) increasing from t_min to T; ``states``: K+1 states (tensor (N, d) or tuple
    (x, v)) at those times, e.g. a reversed sampler trajectory. Returns
    -1/N sum_n sum_k log N(u_{k+1}; Phi_k(A) u_k, Q_k(A)) / K, differentiable in the stiffness
    (the forward half-step of IPF restricted to linear forward scores; see the module docstring)."""
    if len(states) != len(times):
        raise ValueError(f"got {len(states)} states for {len(times)} times")
    lam, U = process.eig(live=True)
    dB = process.integrated_beta(times[1:]) - process.integrated_beta(times[:-1])
    Phi, Q = process.transition(dB, lam)  # (K, d', k, k)

    def eig_stack(s):
        parts = [s] if process.order == 1 else list(s)
        parts = [p.to(_F64) if U is None else p.to(_F64) @ U for p in parts]
        return torch.stack(parts, -1)  # (N, d, k)

    u = torch.stack([eig_stack(s) for s in states], 0)  # (K+1, N, d, k)
    pred = torch.einsum("kdij,kndj->kndi", Phi, u[:-1])
    r = (u[1:] - pred).unsqueeze(-1)
    L = torch.linalg.cholesky(Q + 1e-12 * torch.eye(process.order, dtype=_F64))
    z = torch.linalg.solve_triangular(L.unsqueeze(1), r, upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (K, d')
    nll = 0.5 * z.pow(2).sum((-1, -2)) + 0.5 * logdet.sum(-1).unsqueeze(1) * (u.shape[2] / logdet.shape[1])
    return nll.mean(1).sum(0) / len(dB)


PROCESSES = {"vp": (1, False), "vsdm": (1, True), "cld": (2, False), "vsmd": (2, True)}


def make_phase_space_process(name: str, dim: int, **kwargs) -> PhaseSpaceProcess:
    """``vp`` | ``vsdm`` | ``cld`` | ``vsmd``; the learned ones get a fresh ``Stiffness(dim)``."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    order, learned = PROCESSES[name]
    lam_range = {k: kwargs.pop(k) for k in ("lam_min", "lam_max") if k in kwargs}
    return PhaseSpaceProcess(order, stiffness=Stiffness(dim, **lam_range) if learned else None, **kwargs)
