"""A fully connected VAE (Kingma & Welling 2014) for flattened images in [-1, 1].

Encoder 784-400-200-(2 x latent) and a mirrored decoder by default (docs/methods/ridge_phases.md: the MNIST
latent of the ridge paper is 32-d). The likelihood is Bernoulli on (x + 1) / 2, so the decoder
outputs logits; ``decode`` returns the mean image mapped back to [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(w_in, w_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """x (B, in_dim) in [-1, 1] <-> z (B, latent_dim)."""

    def __init__(self, in_dim: int = 784, hidden: tuple[int, ...] = (400, 200), latent_dim: int = 32) -> None:
        super().__init__()
        self.in_dim, self.latent_dim = in_dim, latent_dim
        self.encoder = _mlp([in_dim, *hidden, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden), in_dim])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | x), each (B, latent_dim)."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            x = x.reshape(x.shape[0], -1)
            if x.shape[1] != self.in_dim:
                raise ValueError(f"VAE expects inputs with {self.in_dim} features, got {x.shape[1]}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image in [-1, 1], (B, in_dim)."""
        return 2.0 * torch.sigmoid(self.decoder(z)) - 1.0

    def loss(self, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, dict]:
        """Negative ELBO per example averaged over the batch; ``eps`` (B, latent) fixes the noise.

        -ELBO = E_q[-log p(x|z)] + beta KL(q(z|x) || N(0, I)), one reparametrised draw z = mu + e^{lv/2} eps.
        """
        x = x.reshape(x.shape[0], -1)
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = F.binary_cross_entropy_with_logits(self.decoder(z), (x + 1) / 2, reduction="none").sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return (rec + beta * kl).mean(), {"rec": rec.mean().detach(), "kl": kl.mean().detach()}
