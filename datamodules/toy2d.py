"""2-D toy distributions: two moons, 8 Gaussians, checkerboard, and Gaussian mixtures given by
means / weights / scales. Each has an exact sampler; training, validation and held-out test sets
are independent draws from it."""

from __future__ import annotations

import math

import torch

from datamodules.base import IndexedTensorDataset, TensorDataModule

DATASETS = ("moons", "gaussians8", "checkerboard", "mixture")


def sample_moons(n: int, gen: torch.Generator, noise: float = 0.08) -> torch.Tensor:
    u = torch.rand(n, generator=gen) * math.pi
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, torch.cos(u), 1.0 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0
    return pts + noise * torch.randn(n, 2, generator=gen)


def sample_mixture(n: int, gen: torch.Generator, means, weights=None, scales=None) -> torch.Tensor:
    means = torch.as_tensor(means, dtype=torch.float32)
    if means.ndim != 2:
        raise ValueError(f"mixture means must be a list of points (K, d), got shape {tuple(means.shape)}")
    k = len(means)
    weights = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    scales = torch.full((k,), 0.1) if scales is None else torch.as_tensor(scales, dtype=torch.float32)
    if len(weights) != k or len(scales) != k:
        raise ValueError(f"mixture needs {k} weights and {k} scales, got {len(weights)} and {len(scales)}")
    comp = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=gen)
    return means[comp] + scales[comp, None] * torch.randn(n, means.shape[1], generator=gen)


def sample_gaussians8(n: int, gen: torch.Generator) -> torch.Tensor:
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return sample_mixture(n, gen, means, scales=[0.15] * 8)


def sample_checkerboard(n: int, gen: torch.Generator) -> torch.Tensor:
    x1 = torch.rand(n, generator=gen) * 4 - 2
    x2 = torch.rand(n, generator=gen) - torch.randint(0, 2, (n,), generator=gen) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], dim=1)


def sample_toy2d(name: str, n: int, gen: torch.Generator, **mixture) -> torch.Tensor:
    if name == "moons":
        return sample_moons(n, gen)
    if name == "gaussians8":
        return sample_gaussians8(n, gen)
    if name == "checkerboard":
        return sample_checkerboard(n, gen)
    if name == "mixture":
        return sample_mixture(n, gen, **mixture)
    raise ValueError(f"unknown 2-D dataset {name!r}; choose one of {DATASETS}")


class Toy2DDataModule(TensorDataModule):
    """Independent train / val / test draws from a 2-D toy distribution.

    ``means``, ``weights``, ``scales`` configure ``dataset=mixture`` (K points, K weights, K stds).
    """

    def __init__(
        self,
        dataset: str = "moons",
        n_train: int = 20000,
        n_val: int = 2000,
        n_test: int = 5000,
        means: list | None = None,
        weights: list | None = None,
        scales: list | None = None,
        batch_size: int = 512,
        eval_batch_size: int = 5000,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset: unknown 2-D dataset {dataset!r}; choose one of {DATASETS}")
        if dataset == "mixture" and not means:
            raise ValueError("data.means: dataset=mixture needs a list of mode means, e.g. [[-3, 0], [3, 0]]")
        self.dataset, self.sizes = dataset, (n_train, n_val, n_test)
        self.mixture = {"means": means, "weights": weights, "scales": scales} if dataset == "mixture" else {}

    def build(self):
        gen = torch.Generator().manual_seed(self.seed)
        return tuple(IndexedTensorDataset(sample_toy2d(self.dataset, n, gen, **self.mixture)) for n in self.sizes)
