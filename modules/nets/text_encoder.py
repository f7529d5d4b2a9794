"""Caption encoder for text-to-image models: token + position embeddings through a small
pre-norm transformer, so that word order (which colour binds to which shape, which object is
left of which) survives; mean-pooling bags of words would lose it."""

from __future__ import annotations

import torch
from torch import nn


class CaptionEncoder(nn.Module):
    """tokens (B, L) long, 0 = padding -> (tokens (B, L + 1, dim), pooled (B, dim)).

    A learned summary token is prepended (its output is ``pooled``) so that an all-padding
    caption -- the "null" caption of classifier-free guidance -- still has a representation."""

    def __init__(
        self, vocab_size: int, max_len: int = 12, dim: int = 128, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.max_len, self.dim = max_len, dim
        self.token = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(1, max_len + 1, dim))
        self.summary = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.summary, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens must be (B, L <= {self.max_len}), got {tuple(tokens.shape)}")
        b, length = tokens.shape
        h = torch.cat([self.summary.expand(b, 1, self.dim), self.token(tokens)], dim=1)
        h = h + self.position[:, : length + 1]
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=tokens.device), tokens == 0], dim=1)
        h = self.norm(self.blocks(h, src_key_padding_mask=pad))
        return h, h[:, 0]

    @staticmethod
    def padding_mask(tokens: torch.Tensor) -> torch.Tensor:
        """(B, L + 1) True where a key is padding (the summary token never is)."""
        return torch.cat(
            [torch.zeros(len(tokens), 1, dtype=torch.bool, device=tokens.device), tokens == 0], dim=1
        )
