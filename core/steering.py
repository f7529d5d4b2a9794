"""Training-free representation steering (arXiv 2512.20963, section 4 of METHODS.md).

During the later (low-noise) sampling steps, the hidden activations h of the denoiser are shifted by
alpha * v, where v is the mean activation of training examples of the target concept:

    h_steered = h + alpha * v   for sigma <= sigma_start,   v = mean_{i: y_i = target} h(x_i).

``alpha = 0`` gives the unsteered model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Steering:
    """``direction`` v (H,), ``alpha`` its strength, applied while sigma <= ``sigma_start``."""

    direction: torch.Tensor
    alpha: float
    sigma_start: float = float("inf")

    def __post_init__(self) -> None:
        if self.direction.ndim != 1:
            raise ValueError(f"steering direction must be a vector (H,), got shape {tuple(self.direction.shape)}")

    def active(self, sigma: float) -> bool:
        return self.alpha != 0.0 and sigma <= self.sigma_start

    def shift(self, h: torch.Tensor, sigma: float) -> torch.Tensor:
        """h (B, H) -> h + alpha v when active at this sigma, else h unchanged."""
        if h.shape[-1] != self.direction.shape[0]:
            raise ValueError(f"steering direction has {self.direction.shape[0]} units, activations have {h.shape[-1]}")
        if not self.active(sigma):
            return h
        return h + self.alpha * self.direction.to(h)


def concept_direction(hidden: torch.Tensor, labels: torch.Tensor, target: int) -> torch.Tensor:
    """v = mean activation over the examples with label ``target``: hidden (N, H), labels (N,) -> (H,)."""
    if hidden.ndim != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, H) and labels (N,), got {tuple(hidden.shape)}, {tuple(labels.shape)}")
    mask = labels == target
    if not bool(mask.any()):
        raise ValueError(f"no example with label {target} to build a steering direction from")
    return hidden[mask].float().mean(0)
