"""A small DiT over table columns: one token per column, adaLN-Zero on every time group's time.

Diffuse Everything's tabular network (hidden 24, depth 4 in the paper): a numeric column's token is a
per-column affine map of its (noisy) value, a categorical column's token its (possibly mask) category
embedding; both get a learned column embedding and an embedding of the column's own time. The
conditioning vector of the adaLN layers embeds the whole time vector (t_1, ..., t_G), so every token
knows every group's noise level. Outputs: eps for numeric columns (B, n_num) and logits (B, n_cat, V)
with V = the largest cardinality (categories a column does not have get a large negative logit).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (any shape) -> (*t.shape, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.unsqueeze(-1).float() * freqs
    return torch.cat([angles.sin(), angles.cos()], -1)


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by c (shift, scale, gate; zero-init gates)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, int(hidden * mlp_ratio)), nn.SiLU(), nn.Linear(int(hidden * mlp_ratio), hidden)
        )
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.ada(nn.functional.silu(c)).unsqueeze(1).chunk(6, -1)
        y = self.norm1(h) * (1 + s1) + b1
        h = h + g1 * self.attention(y)
        y = self.norm2(h) * (1 + s2) + b2
        return h + g2 * self.mlp(y)

    def attention(self, y: torch.Tensor) -> torch.Tensor:
        """Plain softmax attention over the (few) column tokens; written out because the fused CPU
        kernels are slower than two small matmuls at sequence length ~20."""
        B, L, H = y.shape
        q, k, v = self.qkv(y).reshape(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(H // self.heads), -1)
        return self.proj((w @ v).transpose(1, 2).reshape(B, L, H))


class TabularDiT(nn.Module):
    """forward(x_num (B, n_num), x_cat (B, n_cat) long, t_groups (B, G)) -> (eps (B, n_num), logits)."""

    def __init__(
        self,
        n_numeric: int,
        cardinalities: list[int],
        column_groups: list[int],
        n_groups: int,
        hidden: int = 64,
        depth: int = 3,
        heads: int = 4,
        time_dim: int = 32,
    ) -> None:
        super().__init__()
        n_cols = n_numeric + len(cardinalities)
        if len(column_groups) != n_cols:
            raise ValueError(f"column_groups has {len(column_groups)} entries, expected {n_cols} columns")
        self.n_numeric, self.cardinalities, self.n_groups = n_numeric, list(cardinalities), n_groups
        self.vocab = max(cardinalities) if cardinalities else 1
        self.mask_id = self.vocab  # one shared mask id, outside every column's categories
        self.register_buffer("column_groups", torch.tensor(column_groups, dtype=torch.long))
        offsets = (
            torch.tensor([0] + [k + 1 for k in cardinalities[:-1]]).cumsum(0)
            if cardinalities
            else torch.zeros(0)
        )
        self.register_buffer("offsets", offsets.long())
        self.register_buffer("cards", torch.tensor(cardinalities, dtype=torch.long))
        self.num_weight = nn.Parameter(torch.randn(n_numeric, hidden) / math.sqrt(hidden))
        self.num_bias = nn.Parameter(torch.zeros(n_numeric, hidden))
        self.cat_embed = nn.Embedding(sum(k + 1 for k in cardinalities) or 1, hidden)
        self.col_embed = nn.Parameter(torch.randn(n_cols, hidden) * 0.02)
        self.time_dim = time_dim
        self.token_time = nn.Linear(time_dim, hidden)
        self.cond = nn.Sequential(
            nn.Linear(n_groups * time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.blocks = nn.ModuleList(AdaLNBlock(hidden, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False)
        self.out_num = nn.Parameter(torch.zeros(n_numeric, hidden))
        self.out_cat = nn.Linear(hidden, self.vocab)
        valid = torch.arange(self.vocab).unsqueeze(0) < torch.tensor(cardinalities or [1]).unsqueeze(1)
        self.register_buffer("valid", valid[: len(cardinalities)])

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor, t_groups: torch.Tensor):
        B = t_groups.shape[0]
        tok_num = x_num.unsqueeze(-1) * self.num_weight + self.num_bias  # (B, n_num, H)
        cat = torch.minimum(x_cat, self.cards)  # the mask id -> each column's own mask slot
        tok_cat = self.cat_embed(cat + self.offsets)  # (B, n_cat, H)
        t_cols = t_groups[:, self.column_groups]  # (B, n_cols)
        h = (
            torch.cat([tok_num, tok_cat], 1)
            + self.col_embed
            + self.token_time(time_features(t_cols, self.time_dim))
        )
        c = self.cond(time_features(t_groups, self.time_dim).reshape(B, -1))
        for block in self.blocks:
            h = block(h, c)
        h = self.norm_out(h)
        eps = (h[:, : self.n_numeric] * self.out_num).sum(-1)
        logits = self.out_cat(h[:, self.n_numeric :])
        logits = logits.masked_fill(~self.valid, -1e4)
        return eps, logits
