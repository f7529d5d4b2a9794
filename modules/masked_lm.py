"""``MaskedDiffusionLM``: a small bidirectional transformer trained as an MDLM on an exactly checkable
task, and on yes/no self-verification with the verdict read at a [MASK] slot.

Generation loss (MDLM, Sahoo et al. 2024; core.masked_diffusion.MaskedDiffusion.loss): a time t ~ U(0,1)
per example, each answer digit masked with probability m(t), weight m'(t)/m(t) on the masked positions'
cross-entropy; prompts are never masked. The network sees the mask ratio (Prism's decoders pass the
fraction of the sequence still masked as t).
Verification loss: cross-entropy of Y/N at the verdict slot of ``task.verify_inputs(candidate)``;
negatives are corrupted answers and, in a second round (``own_from``), the model's own wrong samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.arith_task import MASK_ID, NO_ID, VOCAB, YES_ID, ArithTask
from core.masked_diffusion import MaskedDiffusion, confidence_decode


class MaskedDiffusionLM(nn.Module):
    """tokens (B, L) long, t (B,) mask ratio -> logits (B, L, V) with V = len(VOCAB) (mask included,
    its logit is excluded by the decoders)."""

    def __init__(self, max_len: int = 32, d_model: int = 128, n_layers: int = 4, n_heads: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.max_len = max_len
        self.tok = nn.Embedding(len(VOCAB), d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.time = nn.Linear(1, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, len(VOCAB))

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        t = torch.as_tensor(t, dtype=torch.float32, device=tokens.device).reshape(-1, 1)
        h = self.tok(tokens) + self.pos[:L] + self.time(t).unsqueeze(1)
        return self.head(self.norm(self.encoder(h)))


def generation_loss(model: MaskedDiffusionLM, task: ArithTask, proc: MaskedDiffusion, a, b, g) -> torch.Tensor:
    x0 = task.targets(a, b)
    t = torch.rand(len(a), generator=g).clamp_min(1e-3)
    u = torch.rand(x0.shape, generator=g)
    xt = torch.where(task.answer_slots & (u < proc.schedule.mask_prob(t)[:, None]), MASK_ID, x0)
    ratio = (xt == MASK_ID).float().mean(1)
    return proc.loss(model(xt, ratio), x0, xt, t, valid=task.answer_slots.expand_as(x0)).mean()


def verification_loss(model: MaskedDiffusionLM, queries: torch.Tensor, verdict: torch.Tensor) -> torch.Tensor:
    """Two-way cross-entropy over the Y/N logits at the last ([MASK]) position."""
    ratio = (queries == MASK_ID).float().mean(1)
    logits = model(queries, ratio)[:, -1][:, [NO_ID, YES_ID]]
    return F.cross_entropy(logits, (verdict == YES_ID).long())


@torch.no_grad()
def own_samples(model, task: ArithTask, n: int, g: torch.Generator, temperature: float = 0.7):
    """The model's own completions of n training problems, labelled by the checker."""
    a, b = task.sample_problems(n, "train", g)
    x = confidence_decode(model, task.prompts(a, b), task.n_answer, MASK_ID, temperature=temperature,
                          generator=g).x
    return task.labelled(x, a, b)


def train_masked_lm(
    task: ArithTask,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    d_model: int = 128,
    n_layers: int = 4,
    n_heads: int = 4,
    verify_weight: float = 0.5,
    own_from: float = 0.6,
    own_pool: int = 512,
    seed: int = 0,
    log_every: int = 0,
    on_log: Callable[[int, MaskedDiffusionLM], None] | None = None,
) -> tuple[MaskedDiffusionLM, dict[str, float]]:
    """Train one model on generation + verification; returns (model in eval mode, training stats).

    From ``own_from`` * steps on, half of the verification batch is drawn from a pool of the model's own
    samples (refreshed once), labelled by the checker: the second round of the issue."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = MaskedDiffusionLM(task.verify_len, d_model, n_layers, n_heads)
    proc = MaskedDiffusion(MASK_ID, "linear")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    pool, t0, stats = None, time.time(), {}
    for step in range(steps):
        model.train()
        a, b = task.sample_problems(batch_size, "train", g)
        loss_gen = generation_loss(model, task, proc, a, b, g)
        nv = batch_size // 2
        q, v = task.verification_examples(a[:nv], b[:nv], g)
        if pool is None and step >= own_from * steps and own_pool > 0:
            model.eval()
            pool = own_samples(model, task, own_pool, g)
            stats["train/own_sample_acc"] = float((pool[1] == YES_ID).float().mean())
            model.train()
        if pool is not None:
            idx = torch.randint(len(pool[0]), (nv // 2,), generator=g)
            q = torch.cat([q[: nv - nv // 2], pool[0][idx]])
            v = torch.cat([v[: nv - nv // 2], pool[1][idx]])
        loss_ver = verification_loss(model, q, v)
        loss = loss_gen + verify_weight * loss_ver
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"[masked_lm] step {step} gen {loss_gen.item():.3f} ver {loss_ver.item():.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
            if on_log is not None:
                model.eval()
                on_log(step, model)
    stats.update({"train/loss_gen": loss_gen.item(), "train/loss_verify": loss_ver.item(),
                  "train/seconds": time.time() - t0,
                  "train/params": float(sum(p.numel() for p in model.parameters()))})
    return model.eval(), stats
