"""``MaskedDiffusionLM``: a small bidirectional transformer trained as an MDLM on an exactly checkable
task, and on yes/no self-verification with the verdict read at a [MASK] slot.

Generation loss (MDLM, Sahoo et al. 2024; core.masked_diffusion.MaskedDiffusion.loss): a time t ~ U(0,1)
per example, each answer digit masked with probability m(t), weight m'(t)/m(t) on the masked positions'
cross-entropy; prompts are never masked. The network sees the mask ratio (Prism's decoders pass the
fraction of the sequence still masked as t).
Verification loss: cross-entropy of Y/N at the verdict slot of ``task.verify_inputs(candidate)``
(optionally class-balanced); negatives are corrupted answers and, in a second round (``own_from``), the
model's own wrong samples from a pool redrawn every ``own_refresh`` steps.
``task`` is a core.arith_task.ArithTask or a core.sudoku_task.SudokuTask (the same interface).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.masked_diffusion import MaskedDiffusion, confidence_decode


class MaskedDiffusionLM(nn.Module):
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


class OnDevice(nn.Module):
    """Runs ``net`` on ``device`` behind a CPU interface: tokens and t move there, logits come back to
    the CPU (every task, generator and decoder in core/ works on CPU tensors; gradients flow through
    the moves). Lets the same training and search code use an accelerator when one is there."""

    def __init__(self, net: nn.Module, device: str) -> None:
        super().__init__()
        self.net, self.device = net.to(device), torch.device(device)

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        return self.net(tokens.to(self.device), t.to(self.device)).float().cpu()


def generation_loss(model: nn.Module, task, proc: MaskedDiffusion, p: torch.Tensor, g) -> torch.Tensor:
    """MDLM loss on problems p: the answer slots (the prompt's [MASK] positions) masked at t ~ U(0, 1)."""
    x0, slots = task.targets(p), task.prompts(p) == task.mask_id
    t = torch.rand(len(p), generator=g).clamp_min(1e-3)
    u = torch.rand(x0.shape, generator=g)
    xt = torch.where(slots & (u < proc.schedule.mask_prob(t)[:, None]), task.mask_id, x0)
    ratio = (xt == task.mask_id).float().mean(1)
    return proc.loss(model(xt, ratio), x0, xt, t, valid=slots).mean()


def verification_loss(model: nn.Module, queries: torch.Tensor, verdict: torch.Tensor, mask_id: int,
                      yes_id: int, no_id: int, balanced: bool = False) -> torch.Tensor:
    """Two-way cross-entropy over the (no, yes) logits at the last ([MASK]) position. ``balanced``:
    each class present in the batch weighs half (the model's own samples are mostly wrong, and a
    verifier that learns the base rate says nothing about which candidate is right)."""
    ratio = (queries == mask_id).float().mean(1)
    logits = model(queries, ratio)[:, -1][:, [no_id, yes_id]]
    y = (verdict == yes_id).long()
    if not balanced:
        return F.cross_entropy(logits, y)
    nll = F.cross_entropy(logits, y, reduction="none")
    per_class = [nll[y == c].mean() for c in (0, 1) if bool((y == c).any())]
    return torch.stack(per_class).mean()


@torch.no_grad()
def own_samples(model, task, n: int, g: torch.Generator, temperature: float = 0.7, group: int = 1):
    """The model's own completions of n training problems, labelled by the checker: ``group`` completions
    of each of n // group problems (right and wrong answers to the same problem side by side)."""
    p = task.sample_problems(max(1, n // group), "train", g).repeat_interleave(group, 0)
    x = confidence_decode(model, task.prompts(p), task.n_steps, task.mask_id, temperature=temperature,
                          generator=g).x
    return task.labelled(x, p)


def train_masked_lm(
    task,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    d_model: int = 128,
    n_layers: int = 4,
    n_heads: int = 4,
    verify_weight: float = 0.5,
    verify_frac: float = 0.5,
    balanced: bool = True,
    own_from: float = 0.6,
    own_pool: int = 512,
    own_refresh: int = 0,
    own_frac: float = 0.5,
    own_group: int = 1,
    structure: bool = False,
    verify_steps: int = 0,
    verify_lr: float = 0.3,
    round2_gen: bool = True,
    temperature: float = 0.7,
    seed: int = 0,
    device: str = "cpu",
    log_every: int = 0,
    on_log: Callable[[int, MaskedDiffusionLM], None] | None = None,
) -> tuple[MaskedDiffusionLM, dict[str, float]]:
    """Train one model on generation + verification; returns (model in eval mode, training stats).

    Each step: the MDLM loss on ``batch_size`` problems and ``verify_weight`` x the verification loss
    on ``verify_frac`` * batch_size labelled candidates (corrupted targets). From ``own_from`` * steps
    on (the second round), a fraction ``own_frac`` of the verification batch is the model's own
    completions at ``temperature`` (a pool of ``own_pool``, ``own_group`` per problem, redrawn every
    ``own_refresh`` steps; 0 = drawn once), labelled by the checker. Then ``verify_steps`` more steps
    train on full batches of verification examples (corrupted and own; the issue's second round, once
    the model can generate) at ``verify_lr`` * lr, with the generation loss unless ``round2_gen`` is
    False (measured on Sudoku: verification alone makes a near-perfect verifier, AUROC 0.99, but the
    single-sample accuracy falls from 0.60 to 0.12 -- the shared network forgets how to generate).
    ``structure``: the task's ``position_groups`` (if any) feed the model's group embeddings."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    groups = getattr(task, "position_groups", None) if structure else None
    model: nn.Module = MaskedDiffusionLM(len(task.vocab), task.verify_len, d_model, n_layers, n_heads, groups)
    if device != "cpu":
        model = OnDevice(model, device)
    proc = MaskedDiffusion(task.mask_id, "linear")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: verify_lr if s >= steps else
        min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    pool, pool_step, t0, stats, accs = None, -1, time.time(), {}, []
    for step in range(steps + verify_steps):
        model.train()
        round2 = step >= steps  # the second round: the whole batch also as verification examples
        nv = batch_size if round2 else max(2, int(batch_size * verify_frac))
        n_own = int(round(nv * own_frac))
        p = task.sample_problems(batch_size, "train", g)
        if not round2 or round2_gen:
            loss_gen = generation_loss(model, task, proc, p, g)
        q, v = task.verification_examples(p[:nv] if nv <= batch_size else task.sample_problems(nv, "train", g), g)
        due = pool is None or (own_refresh > 0 and step - pool_step >= own_refresh)
        if due and step >= own_from * steps and own_pool > 0 and n_own > 0:
            model.eval()
            pool, pool_step = own_samples(model, task, own_pool, g, temperature, own_group), step
            accs.append(float((pool[1] == task.yes_id).float().mean()))
            model.train()
        if pool is not None:
            idx = torch.randint(len(pool[0]), (n_own,), generator=g)
            q = torch.cat([q[: nv - n_own], pool[0][idx]])
            v = torch.cat([v[: nv - n_own], pool[1][idx]])
        loss_ver = verification_loss(model, q, v, task.mask_id, task.yes_id, task.no_id, balanced)
        loss = verify_weight * loss_ver + (0.0 if round2 and not round2_gen else loss_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step in (steps - 1, steps + verify_steps - 1)):
            print(f"[masked_lm] step {step} gen {loss_gen.item():.3f} ver {loss_ver.item():.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
            if on_log is not None:
                model.eval()
                on_log(step, model)
    if accs:
        stats["train/own_sample_acc_first"] = accs[0]
        stats["train/own_sample_acc"] = accs[-1]
        stats["train/own_pool_draws"] = float(len(accs))
    stats.update({"train/loss_gen": loss_gen.item(), "train/loss_verify": loss_ver.item(),
                  "train/seconds": time.time() - t0,
                  "train/params": float(sum(p.numel() for p in model.parameters()))})
    return model.eval(), stats
