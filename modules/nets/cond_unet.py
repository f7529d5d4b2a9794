"""A small text-conditioned UNet for 32x32 / 64x64 RGB: residual blocks with FiLM from
(time embedding + pooled caption) and cross-attention to the caption tokens at the two
coarsest resolutions (where objects are a few pixels, so attention can bind words to places)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([args.sin(), args.cos()], dim=1)


class FiLMResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, then (1 + scale) * h + shift from the conditioning vector."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(cond).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class CrossAttention(nn.Module):
    """Image positions (queries) attend to caption tokens (keys/values); residual, zero-initialised out."""

    def __init__(self, channels: int, text_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, kdim=text_dim, vdim=text_dim, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out, _ = self.attn(q, text, text, key_padding_mask=pad, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class CondUNet(nn.Module):
    """v_theta(x_t, t, caption): x (B, 3, H, W), t (B,), text tokens (B, L+1, text_dim) with
    padding mask (B, L+1) and pooled caption (B, text_dim) -> (B, 3, H, W).

    ``patch`` folds patch x patch pixels into channels first (pixel unshuffle; the UNet then runs at
    H / patch, which is what makes it affordable on a CPU) and unfolds them at the end;
    ``channel_mults`` sets one resolution level each (H / patch divisible by 2^(levels-1));
    ``attn_levels`` counts cross-attention levels from the coarsest."""

    def __init__(
        self,
        in_channels: int = 3,
        base: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        text_dim: int = 128,
        attn_levels: int = 2,
        heads: int = 4,
        patch: int = 2,
    ) -> None:
        super().__init__()
        self.patch = patch
        in_channels = in_channels * patch * patch
        cond_dim = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.text_proj = nn.Linear(text_dim, cond_dim)
        chans = [base * m for m in channel_mults]
        n = len(chans)
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        c_prev = chans[0]
        for i, c in enumerate(chans):
            self.down.append(FiLMResBlock(c_prev, c, cond_dim))
            self.down_attn.append(
                CrossAttention(c, text_dim, heads) if i >= n - attn_levels else nn.Identity()
            )
            c_prev = c
        self.mid = FiLMResBlock(c_prev, c_prev, cond_dim)
        self.mid_attn = CrossAttention(c_prev, text_dim, heads)
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for i in reversed(range(n)):
            self.up.append(FiLMResBlock(c_prev + chans[i], chans[i], cond_dim))
            self.up_attn.append(
                CrossAttention(chans[i], text_dim, heads) if i >= n - attn_levels else nn.Identity()
            )
            c_prev = chans[i]
        self.out = nn.Sequential(
            nn.GroupNorm(min(8, c_prev), c_prev), nn.SiLU(), nn.Conv2d(c_prev, in_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _attend(self, block: nn.Module, h, text, pad):
        return h if isinstance(block, nn.Identity) else block(h, text, pad)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, pad: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        cond = self.time_mlp(timestep_embedding(t, self.base)) + self.text_proj(pooled)
        h = self.stem(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        skips = []
        for i, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            h = self._attend(attn, block(h, cond), text, pad)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid_attn(self.mid(h, cond), text, pad)
        for i, (block, attn) in enumerate(zip(self.up, self.up_attn)):
            h = self._attend(attn, block(torch.cat([h, skips.pop()], dim=1), cond), text, pad)
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        out = self.out(h)
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out
