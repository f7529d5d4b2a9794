"""Stem's network: a diffusion transformer (DiT, Peebles & Xie 2023) over gene tokens.

Each gene is one token: a learned gene-name embedding plus an MLP of its (noisy) value, with no
positional encoding (genes are a set, not a sequence). Every block is conditioned by adaLN-Zero on
c = TimeEmbed(n) + MLP(image embedding): the block's LayerNorms get a shift and scale and its
residual branches a gate, all regressed from c by a linear layer initialised at zero, so each
block starts as the identity. The final layer outputs eps per gene and, with ``learn_sigma``, a
value v in [-1, 1] per gene that interpolates the log variance (core/diffusion/discrete_ddpm.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, G, W) * (1 + scale) + shift with per-example shift/scale (B, W)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(n: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of step indices n (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=n.device, dtype=torch.float32) / half)
    args = n.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, w = x.shape
        q, k, v = self.qkv(x).reshape(b, g, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, g, w))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the condition c (B, W)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class GeneDiT(nn.Module):
    """eps-network over G gene tokens.

    forward(x (B, G) noisy expression, n (B,) step indices, cond (B, cond_dim)) -> eps (B, G) and
    v (B, G) (or None without ``learn_sigma``).
    """

    def __init__(
        self,
        n_genes: int,
        cond_dim: int,
        width: int = 64,
        depth: int = 3,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = False,
        freq_dim: int = 128,
    ) -> None:
        super().__init__()
        self.learn_sigma, self.freq_dim = learn_sigma, freq_dim
        self.gene_embed = nn.Parameter(torch.empty(n_genes, width))
        self.value_embed = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width))
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, 2 if learn_sigma else 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.gene_embed, std=0.02)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        # the image-embedding MLP keeps its Xavier init (DiT's label table starts at std 0.02): with the
        # modulations at zero, a larger c lets the image signal reach the blocks sooner on small data
        # adaLN-Zero: every modulation and the output start at zero, so the network starts at eps = 0
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final_ada[-1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x: torch.Tensor, n: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.value_embed(x[..., None]) + self.gene_embed
        c = self.time_embed(timestep_embedding(n, self.freq_dim)) + self.cond_embed(cond)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.out(modulate(self.final_norm(h), shift, scale))
        if self.learn_sigma:
            return out[..., 0], torch.tanh(out[..., 1])
        return out[..., 0], None
