"""Pure figure making shared by modules and callbacks (no logger, no Lightning): image grids."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (H', W', C) uint8 grid."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1))
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
