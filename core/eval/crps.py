"""Continuous ranked probability score (CRPS) of sample forecasts.

CRPS(F, y) = E|X - y| - 1/2 E|X - X'|, X, X' ~ F independent (Gneiting & Raftery 2007); lower is
better and it reduces to |x - y| for a point forecast. With m samples sorted x_(1) <= ... <= x_(m),
E|X - X'| over the empirical law is 2/m^2 sum_i (2i - m - 1) x_(i), an O(m log m) formula.
``fair=True`` uses the unbiased pair average 1/(m(m-1)) (Ferro 2014) instead of 1/m^2.
"""

from __future__ import annotations

import math

import torch


def crps_samples(samples: torch.Tensor, y: torch.Tensor, fair: bool = False) -> torch.Tensor:
    """CRPS per target: ``samples`` (m, *shape), ``y`` (*shape) -> (*shape)."""
    if samples.shape[1:] != y.shape:
        raise ValueError(f"samples (m, *shape) must match y's shape; got {tuple(samples.shape)} and "
                         f"{tuple(y.shape)}")
    m = samples.shape[0]
    if fair and m < 2:
        raise ValueError("the fair CRPS needs at least 2 samples")
    abs_err = (samples - y).abs().mean(0)
    xs = samples.sort(0).values
    i = torch.arange(1, m + 1, dtype=samples.dtype).reshape(-1, *([1] * y.ndim))
    pair_sum = 2.0 * ((2 * i - m - 1) * xs).sum(0)  # sum_{a,b} |x_a - x_b|
    spread = pair_sum / (m * (m - 1) if fair else m * m)
    return abs_err - 0.5 * spread


def crps_gaussian(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Closed form for N(mu, sigma^2): sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y-mu)/sigma."""
    z = (y - mu) / sigma
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def normalized_crps(samples: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum CRPS / sum |y| (the GluonTS "mean weighted quantile loss"-style normalisation)."""
    return crps_samples(samples, y).sum() / y.abs().sum().clamp_min(1e-12)
