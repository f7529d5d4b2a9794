"""MLP with a Fourier embedding of time, for vector data (2-D toys, latents, tables of numbers)."""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierTime(nn.Module):
    """Embeds t (B,) as [sin(2 pi f_k t), cos(2 pi f_k t)] with log-spaced frequencies (dim = 2K)."""

    def __init__(self, dim: int = 64, max_freq: float = 100.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2.0 * math.pi * t.reshape(-1, 1).float() * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeMLP(nn.Module):
    """f(x, t): (B, d), (B,) -> (B, out_dim); residual SiLU blocks, time added after each layer."""

    def __init__(
        self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 64, out_dim: int | None = None,
        max_freq: float = 100.0,
    ) -> None:
        super().__init__()
        self.time = nn.Sequential(FourierTime(time_dim, max_freq), nn.Linear(time_dim, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.time_proj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(t)
        h = self.inp(x)
        for block, proj in zip(self.blocks, self.time_proj):
            h = h + block(nn.functional.silu(h + proj(temb)))
        return self.out(nn.functional.silu(h))
