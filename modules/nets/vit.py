"""A small Vision Transformer (Dosovitskiy et al., 2021) for 28x28 / 32x32 images.

Patches of ``patch x patch`` pixels -> linear embedding + learned position embedding -> ``depth``
pre-norm blocks (multi-head self-attention through F.scaled_dot_product_attention, GELU MLP) ->
LayerNorm -> mean over tokens -> linear head. Input (B, C, H, W) or flat (B, C*H*W); output logits (B, K).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT: dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, D/heads)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT(image_size=28, patch=4, channels=1, num_classes=10, dim=64, depth=3, heads=4, mlp_ratio=2)."""

    def __init__(self, image_size: int = 28, patch: int = 4, channels: int = 1, num_classes: int = 10,
                 dim: int = 64, depth: int = 3, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ViT: patch={patch} must divide image_size={image_size}")
        self.image_size, self.patch, self.channels = image_size, patch, channels
        n_tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) / math.sqrt(dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or (B, C*H*W) -> (B, T, C*patch*patch)."""
        s, p = self.image_size, self.patch
        x = x.reshape(len(x), self.channels, s, s)
        x = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
        return x.permute(0, 2, 3, 1, 4, 5).reshape(len(x), (s // p) ** 2, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.patches(x)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))
