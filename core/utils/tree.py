"""Tiny helpers that let samplers treat a tensor and a tuple of tensors (CLD's (x, v), a
multimodal state) the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

State = torch.Tensor | tuple[torch.Tensor, ...]


def tree_map(fn: Callable[..., torch.Tensor], *states: Any) -> Any:
    """Apply ``fn`` leaf-wise; states must share structure (tensor, or tuple/list of tensors)."""
    first = states[0]
    if isinstance(first, (tuple, list)):
        return tuple(tree_map(fn, *parts) for parts in zip(*states))
    return fn(*states)


def tree_randn_like(state: Any, generator: torch.Generator | None = None) -> Any:
    def draw(x: torch.Tensor) -> torch.Tensor:
        # a generator lives on one device: draw there, then move (CPU generator, CUDA state)
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    return tree_map(draw, state)


def tree_clone(state: Any) -> Any:
    return tree_map(lambda x: x.detach().clone(), state)


def tree_leading_dim(state: Any) -> int:
    return int((state[0] if isinstance(state, (tuple, list)) else state).shape[0])
