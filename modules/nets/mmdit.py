"""A small MMDiT (Esser et al. 2024, SD3) for image + caption pairs with one time per modality.

Two token streams -- image patches (B, N, C p^2) with N = (H / p)^2 and caption tokens (B, L) -- keep
their own weights (embeddings, adaLN modulation, qkv, MLP, output heads) and meet in one joint
attention over the N + L tokens in every block. Diffuse Everything (Rojas et al. 2025, Sec. 4)
gives each modality its own time: the adaLN conditioning vector embeds (t_img, t_txt) through one
time embedder per modality, c = MLP([emb_img(t_img), emb_txt(t_txt)]), so both streams know both
noise levels (an image stream must know whether the caption it attends to is clean, t_txt = 0, or
masked). Outputs: the image stream's eps prediction (B, C, H, W) and the caption stream's logits
(B, L, V) over the V real tokens (the mask token, id V, is an input only).
"""

from __future__ import annotations

import torch
from torch import nn

from modules.nets.tabular_dit import time_features


class StreamModulation(nn.Module):
    """adaLN-Zero of one stream: c (B, H) -> shift, scale, gate for attention and MLP (B, 1, H) each."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, c: torch.Tensor) -> list[torch.Tensor]:
        return self.lin(nn.functional.silu(c)).unsqueeze(1).chunk(6, -1)


class JointBlock(nn.Module):
    """One MMDiT block: per-stream adaLN, qkv and MLP; one softmax attention over both streams."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        m = int(hidden * mlp_ratio)
        self.mod = nn.ModuleList(StreamModulation(hidden) for _ in range(2))
        self.qkv = nn.ModuleList(nn.Linear(hidden, 3 * hidden) for _ in range(2))
        self.proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(2))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, m), nn.GELU(approximate="tanh"), nn.Linear(m, hidden)) for _ in range(2)
        )
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)

    def forward(self, streams: list[torch.Tensor], c: torch.Tensor) -> list[torch.Tensor]:
        mods = [m(c) for m in self.mod]
        qkv = [self.qkv[i](self.norm(h) * (1 + mods[i][0]) + mods[i][1]) for i, h in enumerate(streams)]
        lengths = [h.shape[1] for h in streams]
        B, H = streams[0].shape[0], streams[0].shape[2]
        q, k, v = torch.cat(qkv, 1).reshape(B, sum(lengths), 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v over both streams
        att = att.transpose(1, 2).reshape(B, sum(lengths), H).split(lengths, 1)
        out = []
        for i, h in enumerate(streams):
            s1, b1, g1, s2, b2, g2 = mods[i]
            h = h + g1 * self.proj[i](att[i])
            h = h + g2 * self.mlp[i](self.norm(h) * (1 + s2) + b2)
            out.append(h)
        return out


class MMDiT(nn.Module):
    """forward(image (B, C, S, S), tokens (B, L) long in [0, V], t (B, 2) = (t_img, t_txt))
    -> (eps (B, C, S, S), logits (B, L, V)). ``vocab_size`` V excludes the mask token (id V)."""

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        patch: int = 4,
        vocab_size: int = 27,
        text_len: int = 12,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        time_dim: int = 64,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
        self.image_size, self.channels, self.patch = image_size, channels, patch
        self.grid = image_size // patch
        self.vocab_size, self.mask_id, self.text_len, self.time_dim = vocab_size, vocab_size, text_len, time_dim
        pdim = channels * patch * patch
        self.img_in = nn.Linear(pdim, hidden)
        self.img_pos = nn.Parameter(torch.randn(self.grid * self.grid, hidden) * 0.02)
        self.txt_in = nn.Embedding(vocab_size + 1, hidden)
        self.txt_pos = nn.Parameter(torch.randn(text_len, hidden) * 0.02)
        self.t_img = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.t_txt = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(2 * hidden, hidden))
        self.blocks = nn.ModuleList(JointBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.ModuleList(nn.Linear(hidden, 2 * hidden) for _ in range(2))
        for lin in self.final_mod:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.img_out = nn.Linear(hidden, pdim)
        nn.init.zeros_(self.img_out.weight)
        nn.init.zeros_(self.img_out.bias)
        self.txt_out = nn.Linear(hidden, vocab_size)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, N, C p^2), patches in row-major order."""
        B, C, p, g = x.shape[0], self.channels, self.patch, self.grid
        return x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, C, p, g = x.shape[0], self.channels, self.patch, self.grid
        return x.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, g * p, g * p)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"MMDiT expects images (B, {self.channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(image.shape)}"
            )
        if tokens.shape[1] != self.text_len or t.shape != (image.shape[0], 2):
            raise ValueError(
                f"MMDiT expects tokens (B, {self.text_len}) and times (B, 2), "
                f"got {tuple(tokens.shape)} and {tuple(t.shape)}"
            )
        c = self.cond(
            torch.cat(
                [self.t_img(time_features(t[:, 0], self.time_dim)), self.t_txt(time_features(t[:, 1], self.time_dim))],
                -1,
            )
        )
        streams = [self.img_in(self.patchify(image)) + self.img_pos, self.txt_in(tokens) + self.txt_pos]
        for block in self.blocks:
            streams = block(streams, c)
        outs = []
        for i, h in enumerate(streams):
            shift, scale = self.final_mod[i](nn.functional.silu(c)).unsqueeze(1).chunk(2, -1)
            outs.append(self.norm_out(h) * (1 + scale) + shift)
        return self.unpatchify(self.img_out(outs[0])), self.txt_out(outs[1])
