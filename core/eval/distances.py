"""Distances between point clouds x (n, d) and y (m, d)."""

from __future__ import annotations

import torch


def sliced_w2(
    x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sliced Wasserstein-2 distance: sqrt(E_theta W2^2(theta^T x, theta^T y)) over random unit
    directions theta. 1-D W2 between empirical measures compares sorted projections; when n != m
    both are compared at m' = min(n, m) evenly spaced quantiles."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) with equal d, got {tuple(x.shape)} and {tuple(y.shape)}")
    d = x.shape[1]
    theta = torch.randn(d, n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort(x.double().cpu() @ theta, dim=0).values
    py = torch.sort(y.double().cpu() @ theta, dim=0).values
    k = min(len(px), len(py))
    if len(px) != k:
        px = px[torch.linspace(0, len(px) - 1, k).round().long()]
    if len(py) != k:
        py = py[torch.linspace(0, len(py) - 1, k).round().long()]
    return ((px - py) ** 2).mean().sqrt().float()


def _median_bandwidth(z: torch.Tensor) -> float:
    sub = z[torch.linspace(0, len(z) - 1, min(len(z), 1000)).long()]
    dist = torch.cdist(sub, sub)
    return float(dist[dist > 0].median())


def mmd_rbf(
    x: torch.Tensor, y: torch.Tensor, bandwidths: list[float] | None = None
) -> torch.Tensor:
    """Unbiased squared MMD with a sum of RBF kernels exp(-|a-b|^2 / (2 h^2)).

    Default bandwidths: the median pairwise distance of the pooled sample times {0.5, 1, 2}.
    """
    x, y = x.double().cpu(), y.double().cpu()
    if bandwidths is None:
        med = _median_bandwidth(torch.cat([x, y]))
        bandwidths = [0.5 * med, med, 2.0 * med]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2.0 * h**2)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return (term_x + term_y - 2.0 * kxy.mean()).float()
