"""A small bidirectional transformer for masked diffusion LMs (MDLM-style): token + position + mask-ratio
embeddings, pre-norm encoder layers, a linear head over the vocabulary."""

from __future__ import annotations

import torch
import torch.nn as nn


class MaskedTransformer(nn.Module):
    """tokens (B, L) long, t (B,) mask ratio -> logits (B, L, V) with V = ``vocab_size`` (mask included,
    its logit is excluded by the decoders)."""

    def __init__(self, vocab_size: int, max_len: int = 32, d_model: int = 128, n_layers: int = 4,
                 n_heads: int = 4, position_groups: list[list[int]] | None = None) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        # optional structure of the positions (Sudoku: row, column, box of each cell): each position
        # also gets the sum of its groups' embeddings, so cells that constrain each other look alike
        self.register_buffer("groups", None, persistent=False)
        if position_groups is not None:
            groups = torch.as_tensor(position_groups, dtype=torch.long)
            if groups.ndim != 2 or groups.shape[0] < max_len:
                raise ValueError(f"position_groups must be (>= max_len={max_len}, G), got {tuple(groups.shape)}")
            self.register_buffer("groups", groups, persistent=False)
            self.group_emb = nn.Embedding(int(groups.max()) + 1, d_model)
        self.time = nn.Linear(1, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        t = torch.as_tensor(t, dtype=torch.float32, device=tokens.device).reshape(-1, 1)
        h = self.tok(tokens) + self.pos[:L] + self.time(t).unsqueeze(1)
        if self.groups is not None:
            h = h + self.group_emb(self.groups[:L]).sum(1)
        return self.head(self.norm(self.encoder(h)))
