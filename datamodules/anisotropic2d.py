"""Anisotropic 2-D shapes of the VSDM / VSMD papers: a spiral with y stretched x8 and a
checkerboard with x stretched x6 (scale configurable). Exact samplers; train / val / test are
independent draws."""

from __future__ import annotations

import math

import torch

from datamodules.base import IndexedTensorDataset, TensorDataModule
from datamodules.toy2d import sample_checkerboard

SHAPES = {"spiral": (1.0, 8.0), "checkerboard": (6.0, 1.0)}


def sample_spiral(n: int, gen: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """Two-turn spiral r = theta / (4 pi) in the unit disc (std ~0.5 per axis) plus Gaussian noise."""
    theta = torch.sqrt(torch.rand(n, generator=gen)) * 4 * math.pi
    r = theta / (4 * math.pi)
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
    return pts + noise * torch.randn(n, 2, generator=gen)


def sample_anisotropic(shape: str, n: int, gen: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    if shape == "spiral":
        base = sample_spiral(n, gen)
    elif shape == "checkerboard":
        base = sample_checkerboard(n, gen) / 2.0  # [-1, 1]^2
    else:
        raise ValueError(f"data.shape: unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    return base * torch.tensor(scale)


class Anisotropic2DDataModule(TensorDataModule):
    """``shape``: spiral (default scale x1, y8) | checkerboard (x6, y1); ``scale`` [sx, sy] overrides."""

    def __init__(
        self,
        shape: str = "spiral",
        scale: list[float] | None = None,
        n_train: int = 20000,
        n_val: int = 2000,
        n_test: int = 5000,
        batch_size: int = 512,
        eval_batch_size: int = 5000,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        if shape not in SHAPES:
            raise ValueError(f"data.shape: unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
        if scale is not None and len(scale) != 2:
            raise ValueError(f"data.scale: expected [sx, sy], got {scale}")
        self.shape = shape
        self.scale = tuple(float(s) for s in (scale or SHAPES[shape]))
        self.sizes = (n_train, n_val, n_test)

    def build(self):
        gen = torch.Generator().manual_seed(self.seed)
        return tuple(IndexedTensorDataset(sample_anisotropic(self.shape, n, gen, self.scale)) for n in self.sizes)
