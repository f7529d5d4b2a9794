"""Training-free representation steering (arXiv 2512.20963; docs/methods/relu_memorization.md).

During the later (low-noise) sampling steps, the hidden activations h of the denoiser are shifted by
alpha * v, where v is the mean activation of training examples of the target concept:

    h_steered = h + alpha * v   for sigma <= sigma_start,   v = mean_{i: y_i = target} h(x_i).

``alpha = 0`` gives the unsteered model exactly.
"""

from __future__ import annotations

from collections.abc import Callable
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
            raise ValueError(
                f"steering direction must be a vector (H,), got shape {tuple(self.direction.shape)}"
            )

    def active(self, sigma: float) -> bool:
        return self.alpha != 0.0 and sigma <= self.sigma_start

    def shift(self, h: torch.Tensor, sigma: float) -> torch.Tensor:
        """h (B, H) -> h + alpha v when active at this sigma, else h unchanged."""
        if h.shape[-1] != self.direction.shape[0]:
            raise ValueError(
                f"steering direction has {self.direction.shape[0]} units, activations have {h.shape[-1]}"
            )
        if not self.active(sigma):
            return h
        return h + self.alpha * self.direction.to(h)


def concept_direction(hidden: torch.Tensor, labels: torch.Tensor, target: int) -> torch.Tensor:
    """v = mean activation over the examples with label ``target``: hidden (N, H), labels (N,) -> (H,)."""
    if hidden.ndim != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden must be (N, H) and labels (N,), got {tuple(hidden.shape)}, {tuple(labels.shape)}"
        )
    mask = labels == target
    if not bool(mask.any()):
        raise ValueError(f"no example with label {target} to build a steering direction from")
    return hidden[mask].float().mean(0)


def steering_sweep(
    sample: Callable[[Steering | None], torch.Tensor],
    direction: torch.Tensor,
    alphas: list[float],
    sigma_start: float,
    target: int,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    features: Callable[[torch.Tensor], torch.Tensor],
    frechet: Callable[[torch.Tensor, torch.Tensor], float],
    reference_features: torch.Tensor,
) -> tuple[dict[float, dict[str, float]], dict[float, torch.Tensor]]:
    """For each alpha: draw ``sample(Steering(direction, alpha, sigma_start))`` (n, d), the rate at which
    ``classifier`` (logits) assigns them to ``target``, and the Frechet distance of their ``features`` to
    ``reference_features`` (real data). Returns ({alpha: {"class_rate", "fd"}}, {alpha: samples})."""
    results, samples = {}, {}
    for alpha in alphas:
        x = sample(Steering(direction, float(alpha), sigma_start))
        pred = classifier(x).argmax(1)
        results[float(alpha)] = {
            "class_rate": float((pred == target).float().mean()),
            "fd": frechet(features(x), reference_features),
        }
        samples[float(alpha)] = x
    return results, samples
