"""Image conditioning shared by Stem and the regression baseline.

``PatchEncoder`` maps a batch to a condition vector (B, out_dim): with ``kind=image`` a small CNN,
trained jointly, reads the uint8 patch (B, 3, P, P); with ``kind=embedding`` it passes through a
precomputed or frozen-backbone embedding (B, D) from the datamodule (UNI/CONCH features at paper
scale), normalised by a LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn as nn

ENCODERS = ("image", "embedding")


class PatchCNN(nn.Module):
    """Four stride-2 conv stages with GroupNorm and SiLU, global average pool, linear:
    (B, 3, P, P) -> (B, out)."""

    def __init__(self, out_dim: int = 128, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(chans[-1], out_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float() / 127.5 - 1.0 if image.dtype == torch.uint8 else image
        return self.head(self.features(x))


class PatchEncoder(nn.Module):
    def __init__(
        self, kind: str = "image", embedding_dim: int = 0, out_dim: int = 128, cnn_width: int = 32
    ) -> None:
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"module.patch_encoder.kind: {kind!r} unknown; choose one of {ENCODERS}")
        if kind == "embedding" and embedding_dim <= 0:
            raise ValueError("module.patch_encoder.embedding_dim: kind=embedding needs the embedding width D > 0")
        self.encoder = kind
        self.net = PatchCNN(out_dim, cnn_width) if kind == "image" else nn.LayerNorm(embedding_dim)
        self.out_dim = out_dim if kind == "image" else embedding_dim

    def forward(self, batch: dict) -> torch.Tensor:
        key = "image" if self.encoder == "image" else "embedding"
        if key not in batch:
            raise KeyError(
                f"module.patch_encoder.kind={self.encoder} needs batch[{key!r}]; set data.encoder to match "
                f"(image for patches, precomputed/torchvision for embeddings)"
            )
        return self.net(batch[key])
