"""Forward noising processes with scalar coefficients: x_t = a_t x0 + sigma_t eps.

Time runs from data to noise in every process of the suite: t = 0 is data, t = T is noise.
Each process gives

* ``alpha(t)``, ``sigma(t)``: the coefficients (a_t, sigma_t) of its Gaussian kernel;
* ``kernel(t)``: a :class:`GaussianKernel` with ``mean(x0)``, ``cov`` and ``sample(x0, generator)``;
* ``drift_coef(t)`` = f(t) and ``diffusion_sq(t)`` = g(t)^2 of the equivalent linear SDE
  dx = f(t) x dt + g(t) dW, derived from the coefficients: f = d log a_t / dt and
  g^2 = d sigma_t^2 / dt - 2 f sigma_t^2 (Kingma et al. 2021, Song et al. 2021);
* ``prior_sample``: a draw from the terminal distribution N(0, sigma_T^2 I).

Phase-space processes (CLD, VSMD) and the masked process live in their own files and share the
``kernel(t)`` protocol, not these scalar coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TimeLike = torch.Tensor | float


def _as_tensor(t: TimeLike) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.tensor(float(t))


def _bcast(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-example coefficients (B,) to broadcast against x of shape (B, ...)."""
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))


@dataclass
class GaussianKernel:
    """q(x_t | x0) = N(a x0, sigma^2 I); ``alpha`` and ``sigma`` are scalars or shape (B,)."""

    alpha: torch.Tensor
    sigma: torch.Tensor

    def mean(self, x0: torch.Tensor) -> torch.Tensor:
        return _bcast(self.alpha, x0) * x0

    @property
    def cov(self) -> torch.Tensor:
        """Isotropic covariance, as the per-example variance sigma^2."""
        return self.sigma**2

    def sample(
        self, x0: torch.Tensor, generator: torch.Generator | None = None, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x_t, eps) with x_t = a x0 + sigma eps; pass ``eps`` to fix the noise."""
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.mean(x0) + _bcast(self.sigma, x0) * eps, eps


class ScalarProcess:
    """Base class: subclasses define ``alpha``, ``sigma`` and their time derivatives."""

    T: float = 1.0
    t_min: float = 1e-3

    def alpha(self, t: TimeLike) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: TimeLike) -> torch.Tensor:
        raise NotImplementedError

    def d_log_alpha(self, t: TimeLike) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma_sq(self, t: TimeLike) -> torch.Tensor:
        raise NotImplementedError

    def kernel(self, t: TimeLike) -> GaussianKernel:
        t = _as_tensor(t)
        return GaussianKernel(self.alpha(t), self.sigma(t))

    def velocity_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """d x_t / dt = a'_t x0 + sigma'_t eps for per-example times t (B,)."""
        da, ds = alpha_sigma_derivatives(self, t)
        return _bcast(da, x0) * x0 + _bcast(ds, x0) * eps

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        """f(t) of dx = f(t) x dt + g(t) dW."""
        return self.d_log_alpha(_as_tensor(t))

    def diffusion_sq(self, t: TimeLike) -> torch.Tensor:
        """g(t)^2 = d sigma^2/dt - 2 f sigma^2."""
        t = _as_tensor(t)
        return self.d_sigma_sq(t) - 2.0 * self.d_log_alpha(t) * self.sigma(t) ** 2

    def prior_sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: str | None = None
    ) -> torch.Tensor:
        std = float(self.sigma(torch.tensor(self.T)))
        return std * torch.randn(shape, generator=generator, device=device)

    def marginal_std(self, t: TimeLike, data_std: float = 1.0) -> torch.Tensor:
        """Std of x_t when x0 has isotropic std ``data_std`` (for preconditioning)."""
        t = _as_tensor(t)
        return torch.sqrt(self.alpha(t) ** 2 * data_std**2 + self.sigma(t) ** 2)


def linear_beta(t: torch.Tensor, beta_min: float, beta_max: float, T: float = 1.0) -> torch.Tensor:
    """beta(t) = beta_min + (t / T) (beta_max - beta_min): the linear noise rate of VP (and of every
    phase-space process in core.diffusion.phase_space)."""
    return beta_min + t / T * (beta_max - beta_min)


def integrated_linear_beta(t: torch.Tensor, beta_min: float, beta_max: float, T: float = 1.0) -> torch.Tensor:
    """B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / (2 T)."""
    return beta_min * t + 0.5 * (beta_max - beta_min) * t**2 / T


class VP(ScalarProcess):
    """Variance-preserving process with linear beta(t) = beta_min + t (beta_max - beta_min), T = 1.

    Parametrised by its log-mean: log a_t = -1/2 int_0^t beta = -(beta_min t + (beta_max-beta_min) t^2/2)/2,
    sigma_t^2 = 1 - a_t^2. (The Diffuse-Everything tabular code writes e^{-s} with s = 2x this log-mean.)
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> None:
        self.beta_min, self.beta_max, self.t_min, self.T = beta_min, beta_max, t_min, 1.0

    def log_mean(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * integrated_linear_beta(_as_tensor(t), self.beta_min, self.beta_max)

    def beta(self, t: TimeLike) -> torch.Tensor:
        return linear_beta(_as_tensor(t), self.beta_min, self.beta_max)

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.exp(self.log_mean(t))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_mean(t)))

    def d_log_alpha(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def d_sigma_sq(self, t: TimeLike) -> torch.Tensor:
        return self.beta(t) * torch.exp(2.0 * self.log_mean(t))


class OU(ScalarProcess):
    """Ornstein-Uhlenbeck dx = -x dt + sqrt(2) dW: a_t = e^{-t}, sigma_t^2 = h_t = 1 - e^{-2t}."""

    def __init__(self, T: float = 10.0, t_min: float = 1e-3) -> None:
        self.T, self.t_min = T, t_min

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.exp(-_as_tensor(t))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(-2.0 * _as_tensor(t)))

    def d_log_alpha(self, t: TimeLike) -> torch.Tensor:
        return -torch.ones_like(_as_tensor(t))

    def d_sigma_sq(self, t: TimeLike) -> torch.Tensor:
        return 2.0 * torch.exp(-2.0 * _as_tensor(t))


class VE(ScalarProcess):
    """Variance-exploding process, geometric sigma(t) = sigma_min (sigma_max/sigma_min)^t, a_t = 1."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0, t_min: float = 0.0) -> None:
        self.sigma_min, self.sigma_max, self.t_min, self.T = sigma_min, sigma_max, t_min, 1.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return self.sigma_min * torch.exp(self._log_ratio * _as_tensor(t))

    def d_log_alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(_as_tensor(t))

    def d_sigma_sq(self, t: TimeLike) -> torch.Tensor:
        return 2.0 * self._log_ratio * self.sigma(t) ** 2


class LinearPath(ScalarProcess):
    """Rectified-flow / linear interpolation path x_t = (1 - t) x0 + t eps; velocity target eps - x0."""

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0) -> None:
        self.t_min, self.T = t_min, t_max

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return 1.0 - _as_tensor(t)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return _as_tensor(t).clone()

    def d_log_alpha(self, t: TimeLike) -> torch.Tensor:
        return -1.0 / (1.0 - _as_tensor(t)).clamp_min(1e-6)

    def d_sigma_sq(self, t: TimeLike) -> torch.Tensor:
        return 2.0 * _as_tensor(t)

    def velocity_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps - x0 exactly (the generic a'_t x0 + sigma'_t eps rounds a'_t = -1 for 15% of float32 t)."""
        return eps - x0

    def prior_sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: str | None = None
    ) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)


PROCESSES = {"vp": VP, "ou": OU, "ve": VE, "linear": LinearPath}


def make_process(name: str, **kwargs: float) -> ScalarProcess:
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    return PROCESSES[name](**kwargs)


def alpha_sigma_derivatives(process: ScalarProcess, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d a_t/dt, d sigma_t/dt), from the process's f and d sigma^2/dt."""
    a, s = process.alpha(t), process.sigma(t)
    return process.d_log_alpha(t) * a, process.d_sigma_sq(t) / (2.0 * s.clamp_min(1e-12))
