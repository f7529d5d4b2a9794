"""Score models on a scalar process (docs/methods/ridge_phases.md), all callable as ``score(x, t) -> (B, d)``.

* :class:`EmpiricalScore`: the exact score of the smoothed empirical density p_t (the minimiser of
  denoising score matching over all functions), grad log p_t = (a_t mu(x) - x) / h_t.
* :class:`RandomFeatureScore`: posterior-mean parametrisation
      m(x, t) = A relu(W_x x + W_t phi(t) + b) / sqrt(p),   s(x, t) = (m(x, t) - x) / h_t,
  with W_x ~ N(0, 1/d), W_t ~ N(0, 1/(2K+1)), b ~ N(0, 1) frozen and only A (d, p) trained on
      L(A) = E_{t, x0, z} |m(a_t x0 + sqrt(h_t) z, t) - a_t x0|^2   (= h_t^2-weighted DSM on s).
  With psi = relu(...), U = E[psi psi^T] / p and V = E[a_t x0 psi^T] / sqrt(p), grad_A L = 2 (A U - V),
  so gradient flow dA/dtau = -grad_A L has the closed form
      A(tau) = (A0 - V U^+) e^{-2 tau U} + V U^+,
  which makes the flow time tau ("training accuracy") a dial; tau = inf gives the minimum-norm
  least-squares fit. :func:`train_rf_sgd` trains A by SGD instead, for comparison.
* :class:`PosteriorMeanMLP`: an MLP for m(x, t) with the same Fourier time features.

Times: phi(t) uses s = log(t / t_min) / log(T / t_min) in [0, 1] (resolving the small times of the
geometric sampling grid), phi = [1, cos(pi k s), sin(pi k s)]_{k=1..K}. Training times t are
uniform on [t_min, T] (``time_sampling="uniform"``, the default: little weight on the small times where
modes separate, so a finite model interpolates between modes) or log-uniform.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.diffusion.processes import ScalarProcess
from core.ridge.geometry import empirical_score


class EmpiricalScore:
    """Exact score of p_t = sum_i w_i N(a_t x_i, h_t I); x (B, d), t scalar or (B,) -> (B, d)."""

    def __init__(self, train: torch.Tensor, process: ScalarProcess, weights: torch.Tensor | None = None):
        self.train, self.process, self.weights = train, process, weights

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return empirical_score(x, self.train, self.process, t, self.weights).to(x.dtype)


def fourier_time_features(t: torch.Tensor, n_freq: int, t_min: float, T: float) -> torch.Tensor:
    """phi(t), shape (B, 2K+1), for t (B,): [1, cos(pi k s), sin(pi k s)], s = log-time in [0, 1]."""
    s = (torch.log(t.clamp_min(t_min)) - math.log(t_min)) / (math.log(T) - math.log(t_min))
    k = torch.arange(1, n_freq + 1, dtype=t.dtype, device=t.device)
    ang = math.pi * s[:, None] * k
    return torch.cat([torch.ones_like(s)[:, None], torch.cos(ang), torch.sin(ang)], dim=1)


TIME_SAMPLINGS = ("uniform", "log_uniform")


def sample_training_times(
    n: int, t_min: float, T: float, kind: str = "uniform", generator=None
) -> torch.Tensor:
    """n training times (float64) on [t_min, T], uniform or log-uniform."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if kind == "uniform":
        return t_min + u * (T - t_min)
    if kind == "log_uniform":
        return torch.exp(math.log(t_min) + u * (math.log(T) - math.log(t_min)))
    raise ValueError(f"unknown time_sampling {kind!r}; choose one of {TIME_SAMPLINGS}")


class RandomFeatureScore(nn.Module):
    """Random-feature posterior-mean model; only ``A`` (d, p) is trained (see module docstring)."""

    def __init__(
        self,
        dim: int,
        width: int,
        process: ScalarProcess,
        n_freq: int = 16,
        seed: int = 0,
        init_std: float = 0.0,
        time_sampling: str = "uniform",
    ) -> None:
        super().__init__()
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        self.time_sampling = time_sampling
        if n_freq > 128:
            raise ValueError(f"n_freq (K) must be <= 128, got {n_freq}")
        g = torch.Generator().manual_seed(seed)
        self.dim, self.width, self.n_freq, self.process = dim, width, n_freq, process
        self.register_buffer(
            "W_x", torch.randn(width, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
        )
        k = 2 * n_freq + 1
        self.register_buffer("W_t", torch.randn(width, k, generator=g, dtype=torch.float64) / math.sqrt(k))
        self.register_buffer("b", torch.randn(width, generator=g, dtype=torch.float64))
        self.A = nn.Parameter(init_std * torch.randn(dim, width, generator=g, dtype=torch.float64))

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """psi = relu(W_x x + W_t phi(t) + b), shape (B, p)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        phi = fourier_time_features(t, self.n_freq, self.process.t_min, self.process.T)
        return torch.relu(x.to(torch.float64) @ self.W_x.T + phi @ self.W_t.T + self.b)

    def posterior_mean(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """m(x, t) = A psi / sqrt(p), shape (B, d): the estimate of a_t E[x0 | x_t = x]."""
        return self.features(x, t) @ self.A.T / math.sqrt(self.width)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        h = self.process.sigma(t) ** 2
        return ((self.posterior_mean(x, t) - x.to(torch.float64)) / h[:, None]).to(x.dtype)

    def training_batch(self, data: torch.Tensor, n: int, generator=None):
        """(x_t, t, target a_t x0) for n draws: x0 uniform from ``data``, t per ``time_sampling``."""
        idx = torch.randint(len(data), (n,), generator=generator)
        x0 = data[idx].to(torch.float64)
        t = sample_training_times(n, self.process.t_min, self.process.T, self.time_sampling, generator)
        a, s = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return a * x0 + s * z, t, a * x0

    def loss(self, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of |m(x_t, t) - a_t x0|^2 (the L(A) of the module docstring)."""
        return (self.posterior_mean(x_t, t) - target).pow(2).sum(1).mean()

    @torch.no_grad()
    def feature_moments(self, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor, chunk: int = 8192):
        """Monte-Carlo U = E[psi psi^T] / p (p, p) and V = E[a_t x0 psi^T] / sqrt(p) (d, p)."""
        p = self.width
        U = torch.zeros(p, p, dtype=torch.float64)
        V = torch.zeros(self.dim, p, dtype=torch.float64)
        for i in range(0, len(x_t), chunk):
            psi = self.features(x_t[i : i + chunk], t[i : i + chunk])
            U += psi.T @ psi
            V += target[i : i + chunk].T @ psi
        n = len(x_t)
        return U / (n * p), V / (n * math.sqrt(p))

    @torch.no_grad()
    def set_gradient_flow(
        self,
        U: torch.Tensor,
        V: torch.Tensor,
        tau: float,
        A0: torch.Tensor | None = None,
        rcond: float = 1e-10,
    ) -> None:
        """Set A = A(tau) of gradient flow from A0 (default: the current A). tau = inf allowed."""
        A0 = self.A.detach().clone() if A0 is None else A0
        self.A.copy_(gradient_flow_solution(U, V, A0, tau, rcond))


def gradient_flow_solution(
    U: torch.Tensor, V: torch.Tensor, A0: torch.Tensor, tau: float, rcond: float = 1e-10
) -> torch.Tensor:
    """A(tau) solving dA/dtau = -2 (A U - V), A(0) = A0; U (p, p) symmetric PSD, V and A0 (d, p).

    In U's eigenbasis Q diag(lam) Q^T: A(tau) = A0 Q e^{-2 tau lam} Q^T + V Q f(lam) Q^T with
    f = (1 - e^{-2 tau lam}) / lam, whose lam -> 0 limit is 2 tau; at tau = inf, f = 1/lam on
    eigenvalues above rcond * max(lam) and 0 below (the pseudo-inverse U^+).
    """
    lam, Q = torch.linalg.eigh(U.to(torch.float64))
    lam = lam.clamp_min(0.0)
    keep = lam > rcond * lam.max()
    if math.isinf(tau):
        decay = torch.where(keep, torch.zeros_like(lam), torch.ones_like(lam))
        f = torch.where(keep, 1.0 / lam.clamp_min(1e-300), torch.zeros_like(lam))
    else:
        decay = torch.exp(-2.0 * tau * lam)
        f = torch.where(lam > 1e-14, -torch.expm1(-2.0 * tau * lam) / lam.clamp_min(1e-300), 2.0 * tau)
    return (A0.to(torch.float64) @ Q) * decay @ Q.T + (V.to(torch.float64) @ Q) * f @ Q.T


def train_rf_sgd(
    model: RandomFeatureScore,
    data: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    generator=None,
    fixed_batch: tuple | None = None,
) -> list[float]:
    """Train A by SGD on L(A); the SGD time lr * steps approximates the flow time tau.

    ``fixed_batch`` = (x_t, t, target): use these draws (full-batch gradient descent on the same
    Monte-Carlo set as the closed form) instead of fresh minibatches. Returns the loss per step.
    """
    opt = torch.optim.SGD([model.A], lr=lr)
    losses = []
    for _ in range(steps):
        batch = fixed_batch if fixed_batch is not None else model.training_batch(data, batch_size, generator)
        loss = model.loss(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class PosteriorMeanMLP(nn.Module):
    """MLP for m(x, t) ~ a_t E[x0 | x_t] with Fourier time features; score = (m - x) / h_t.

    x (B, d), t (B,) -> m (B, d). ``forward`` returns the posterior mean; :meth:`score` the score.
    """

    def __init__(
        self, dim: int, process: ScalarProcess, hidden: int = 512, layers: int = 2, n_freq: int = 16
    ):
        super().__init__()
        self.process, self.n_freq = process, n_freq
        widths = [dim + 2 * n_freq + 1] + [hidden] * layers
        mods: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            mods += [nn.Linear(w_in, w_out), nn.SiLU()]
        mods.append(nn.Linear(widths[-1], dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        phi = fourier_time_features(t, self.n_freq, self.process.t_min, self.process.T)
        # Skip connection c_t x with c_t = a^2 / (a^2 + h): the posterior mean of unit-variance data,
        # so at small t (m ~ x) the net only learns a correction.
        a2, h = self.process.alpha(t) ** 2, self.process.sigma(t) ** 2
        return (a2 / (a2 + h))[:, None] * x + self.net(torch.cat([x, phi], dim=1))

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return (self(x, t) - x) / (self.process.sigma(t) ** 2)[:, None]
