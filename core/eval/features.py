"""The suite's in-suite feature networks (the FID-style distance on them: core.eval.frechet).

Inception weights cannot be downloaded here, so each image domain (MNIST, sklearn digits, shapes)
gets a small CNN classifier trained on its own real data. Its penultimate activations are the
features of a Frechet distance (FID's formula) and its predictions give class rates.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureNet(nn.Module):
    """Small CNN classifier: images (B, C, H, W) in [-1, 1] -> logits (B, num_classes).

    ``features(x)`` returns the (B, num_features) penultimate activations (``num_features`` wide).
    """

    def __init__(self, in_channels: int = 1, size: int = 28, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.in_channels, self.size = in_channels, size
        self.num_features = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2 if size >= 16 else 1, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, self.num_features), nn.GELU(),
        )
        self.head = nn.Linear(self.num_features, num_classes)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.reshape(len(x), self.in_channels, self.size, self.size)
        if x.shape[1:] != (self.in_channels, self.size, self.size):
            raise ValueError(
                f"FeatureNet expects images (B, {self.in_channels}, {self.size}, {self.size}), got {tuple(x.shape)}"
            )
        return x.float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self._check(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_feature_net(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 32,
) -> FeatureNet:
    """Train a FeatureNet on (N, C, H, W) or flat (N, H*W) images in [-1, 1] with light noise
    augmentation (so that slightly imperfect generations are still classified by content)."""
    if images.ndim == 2:
        side = int(round(images.shape[1] ** 0.5))
        images = images.reshape(len(images), 1, side, side)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    net = FeatureNet(images.shape[1], images.shape[-1], num_classes, width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = images[idx] + 0.1 * torch.randn(images[idx].shape, generator=gen)
        loss = nn.functional.cross_entropy(net(x), labels[idx].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([net.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def class_rates(net: FeatureNet, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Fraction of images assigned to each class, shape (num_classes,)."""
    preds = torch.cat([net(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return torch.bincount(preds, minlength=net.head.out_features).float() / len(preds)
