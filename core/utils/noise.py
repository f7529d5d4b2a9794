"""Per-example noise keyed by (seed, step, example index).

docs/architecture.md asks that one process and N processes see the same noise for the same global batch.
Instead of drawing the whole global batch and slicing it, we use a counter-based generator: each
number is a pure function of (seed, step, global example index, element position, stream), computed
with the splitmix64 mixer on int64 tensors. The result does not depend on how the batch is split
across ranks, on batch order, or on any generator state, and it costs one vectorised pass.
"""

from __future__ import annotations

import math

import torch

_MASK = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _MASK
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = x + _GOLDEN
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def _keys(index: torch.Tensor, numel: int, seed: int, step: int, stream: int) -> torch.Tensor:
    base = _splitmix64(torch.tensor([_signed(seed * 1_000_003 + stream)], dtype=torch.int64))
    base = _splitmix64(base + _signed(step))
    row = _splitmix64(base + index.to(torch.int64).reshape(-1, 1) * _GOLDEN)
    col = torch.arange(numel, dtype=torch.int64, device=index.device).reshape(1, -1)
    return _splitmix64(row + col)


def example_uniform(
    index: torch.Tensor, shape: tuple[int, ...], seed: int, step: int, stream: int = 0
) -> torch.Tensor:
    """Uniform(0, 1) numbers of shape (len(index), *shape), one independent row per example index."""
    numel = math.prod(shape)
    bits = _srl(_keys(index.cpu(), numel, seed, step, stream), 11)  # 53 random bits
    u = (bits.to(torch.float64) + 0.5) / float(1 << 53)
    return u.reshape(len(index), *shape).to(index.device)


def example_normal(
    index: torch.Tensor, shape: tuple[int, ...], seed: int, step: int, stream: int = 0
) -> torch.Tensor:
    """Standard normal numbers of shape (len(index), *shape) by Box-Muller on two uniform streams."""
    u1 = example_uniform(index, shape, seed, step, 2 * stream + 1)
    u2 = example_uniform(index, shape, seed, step, 2 * stream + 2)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).float()


def draw_uniform(
    index: torch.Tensor, shape: tuple[int, ...], *, seed: int, step: int, stream: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform(0, 1) of shape (len(index), *shape): ``torch.rand`` from ``generator`` when one is given
    (a fixed draw, e.g. a Hessian probe or a validation batch: successive calls follow the
    generator's state and ``stream`` is unused), else :func:`example_uniform` keyed by
    (seed, step, index, stream). The generator draw is float32 on the CPU, the keyed one float64
    on ``index``'s device; callers cast."""
    if generator is not None:
        return torch.rand((len(index), *shape), generator=generator)
    return example_uniform(index, shape, seed, step, stream)


def draw_normal(
    index: torch.Tensor, shape: tuple[int, ...], *, seed: int, step: int, stream: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal of shape (len(index), *shape): ``torch.randn`` from ``generator`` when one is
    given, else :func:`example_normal` keyed by (seed, step, index, stream); float32."""
    if generator is not None:
        return torch.randn((len(index), *shape), generator=generator)
    return example_normal(index, shape, seed, step, stream)
