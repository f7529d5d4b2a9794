"""Test-time search for masked diffusion LMs: baselines and Prism (Bai et al., arXiv 2602.01842).

Everything calls ``model_fn(tokens (B, L) long, t (B,) mask ratio) -> logits (B, L, V)`` and charges
every forward pass (verification included) to one ``core.utils.nfe.EvalCounter``: ``counter.items`` counts
sequence-forwards, so NFE per problem = items / P for P problems decoded as one batch.

Decoding is LLaDA's confidence decoding (``core.diffusion.masked``): one block, each step reveals the
most confident masked positions (Gumbel temperature on the candidates); ``steps`` steps in total.

* ``sample_candidates`` -- N independent decodes per problem (single sample: N = 1);
* ``best_of_n`` (argmax of a score, e.g. self-verification), ``majority_vote``, ``weighted_vote``,
  ``oracle_best_of_n`` (any candidate right: an upper bound, not a method);
* ``prism`` -- Hierarchical Trajectory Search: N trajectories; at steps in the window
  [window[0] T, window[1] T) (every ``prune_every``) score greedy completions, de-duplicate, keep the
  best ceil(w_k / branches) as parents, w_k = max(K, ceil(N * shrink^-k)) after the k-th pruning, and
  refill the width with branches made by *partial remasking* (among the ~pool*r least-confident
  decoded tokens re-mask r at random); *Self-Verified Feedback* scores a completion by
  softmax(yes, no logits)[yes] at the verdict [MASK] slot; the survivors' final answers are combined by
  a score-weighted vote.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.diffusion.masked import confidence_decode, unmask_step
from core.utils.nfe import EvalCounter

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KeyFn = Callable[[torch.Tensor], torch.Tensor]  # sequences (B, L) -> answer keys (B,) long


def forward(model_fn: ModelFn, x: torch.Tensor, mask_id: int, counter: EvalCounter | None) -> torch.Tensor:
    """One counted forward pass, t = fraction of each row still masked (the model's conditioning)."""
    if counter is not None:
        counter.add(1, x.shape[0])
    return model_fn(x, (x == mask_id).float().mean(1))


class SelfVerifier:
    """p(yes) (B,) of completed sequences: one forward pass on ``build(x)``, a query whose position
    ``slot`` is [MASK]; softmax over the (no, yes) logits there (a masked LM predicts only at masks)."""

    def __init__(self, model_fn: ModelFn, build: Callable[[torch.Tensor], torch.Tensor], mask_id: int,
                 yes_id: int, no_id: int, slot: int = -1) -> None:
        self.model_fn, self.build, self.mask_id = model_fn, build, mask_id
        self.yes_id, self.no_id, self.slot = yes_id, no_id, slot

    def __call__(self, x: torch.Tensor, counter: EvalCounter | None = None) -> torch.Tensor:
        q = self.build(x)
        if not bool((q[:, self.slot] == self.mask_id).all()):
            raise ValueError(f"verification query has no [MASK] at slot {self.slot}")
        logits = forward(self.model_fn, q, self.mask_id, counter)[:, self.slot]
        return torch.softmax(logits[:, [self.no_id, self.yes_id]].float(), -1)[:, 1]


def sample_candidates(model_fn: ModelFn, prompts: torch.Tensor, n: int, steps: int, mask_id: int, *,
                      temperature: float = 0.7, generator: torch.Generator | None = None,
                      counter: EvalCounter | None = None) -> torch.Tensor:
    """(P, L) prompts -> (P, n, L) independent decodes, ``steps`` counted passes per candidate."""
    P, L = prompts.shape
    x = prompts.repeat_interleave(n, 0)
    out = confidence_decode(model_fn, x, steps, mask_id, temperature=temperature, generator=generator,
                            counter=counter).x
    return out.reshape(P, n, L)


def best_of_n(cands: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(P, N, L), scores (P, N) -> (P, L): the highest-scored candidate (first on ties)."""
    return cands[torch.arange(len(cands)), scores.argmax(1)]


def weighted_vote(cands: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(P, N, L), answer keys (P, N), weights (P, N) -> (P, L): a candidate of the answer with the largest
    summed weight (ties: the earliest such answer)."""
    same = keys.unsqueeze(2) == keys.unsqueeze(1)  # (P, N, N)
    total = (same * weights.unsqueeze(1)).sum(2)  # total weight of each candidate's answer
    return cands[torch.arange(len(cands)), total.argmax(1)]


def majority_vote(cands: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Self-consistency: the most frequent answer key (P, N) -> (P, L)."""
    return weighted_vote(cands, keys, torch.ones(keys.shape, dtype=torch.float32))


def oracle_best_of_n(correct: torch.Tensor) -> torch.Tensor:
    """(P, N) bool -> (P,) bool: some candidate is right (pass@N; needs the exact checker)."""
    return correct.any(1)


@dataclass
class PrismConfig:
    """Prism's knobs (paper defaults scaled to short answers)."""

    n_initial: int = 16
    min_width: int = 2  # K
    window: tuple[float, float] = (0.1, 0.6)  # fraction of the steps where pruning happens
    prune_every: int = 1
    shrink: float = 1.8
    branches: int = 2  # slots per parent after pruning: 1 kept copy + (branches - 1) remasked
    remask_tokens: int = 1  # r
    remask_pool: int = 3  # among pool * r least-confident decoded tokens
    remask: bool = True
    self_verify: bool = True  # else: score = mean log-confidence of the greedy completion (no NFE)
    temperature: float = 0.7

    def widths(self, steps: int) -> dict[int, int]:
        """{step index after which pruning happens: new width}; stops once the width reaches K."""
        lo, hi = int(self.window[0] * steps), math.ceil(self.window[1] * steps)
        out, w, k = {}, self.n_initial, 0
        for i in range(max(lo, 0), min(hi, steps - 1), self.prune_every):
            if w <= self.min_width:
                break
            k += 1
            w = max(self.min_width, math.ceil(self.n_initial * self.shrink ** (-k)))
            out[i] = w
        return out


def expected_prism_nfe(cfg: PrismConfig, steps: int) -> int:
    """NFE per problem of ``prism``: each step's width, plus a verification pass per trajectory at each
    pruning and at the end (with self-verification)."""
    prunes, w, total = cfg.widths(steps), cfg.n_initial, 0
    for i in range(steps):
        total += w
        if i in prunes:
            total += w if cfg.self_verify else 0
            w = prunes[i]
    return total + (w if cfg.self_verify else 0)


def _duplicates(x: torch.Tensor) -> torch.Tensor:
    """(P, W, L) -> (P, W) bool: row equal to an earlier row of the same problem."""
    eq = (x.unsqueeze(2) == x.unsqueeze(1)).all(-1)  # (P, W, W)
    earlier = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril(-1)
    return (eq & earlier).any(2)


def partial_remask(x: torch.Tensor, conf: torch.Tensor, decoded: torch.Tensor, which: torch.Tensor, r: int,
                   pool: int, mask_id: int, generator: torch.Generator | None) -> torch.Tensor:
    """Re-mask, in rows ``which`` (B,) bool, r tokens drawn at random among the pool*r least-confident
    ``decoded`` (B, L) bool positions (confidence ``conf`` (B, L) recorded when each was revealed)."""
    c = torch.where(decoded, conf, torch.full_like(conf, float("inf")))
    n_pool = min(pool * r, x.shape[1])
    low = c.topk(n_pool, 1, largest=False).indices  # (B, n_pool)
    valid = decoded.gather(1, low)
    u = torch.rand(low.shape, generator=generator).to(x.device)
    u = torch.where(valid, u, torch.full_like(u, 2.0))  # never pick a non-decoded slot
    chosen = u.topk(min(r, n_pool), 1, largest=False).indices
    pick = low.gather(1, chosen)
    ok = (u.gather(1, chosen) < 2.0) & which.unsqueeze(1)
    out = x.clone()
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(pick)
    out[rows[ok], pick[ok]] = mask_id
    return out


def prism(model_fn: ModelFn, prompts: torch.Tensor, steps: int, mask_id: int, key_fn: KeyFn,
          cfg: PrismConfig, verifier: SelfVerifier | None = None, *, generator: torch.Generator | None = None,
          counter: EvalCounter | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Prism on P problems at once: prompts (P, L) -> (answers (P, L), info with the final survivors
    (P, W, L) and their scores (P, W)). NFE per problem = ``expected_prism_nfe(cfg, steps)``."""
    if cfg.self_verify and verifier is None:
        raise ValueError("prism with self_verify=True needs a verifier")
    P, L = prompts.shape
    w = cfg.n_initial
    x = prompts.repeat_interleave(w, 0)
    gen_slots = (prompts == mask_id).repeat_interleave(w, 0)
    conf_dec = torch.full(x.shape, float("inf"))
    prunes = cfg.widths(steps)
    for i in range(steps):
        masked = x == mask_id
        logits = forward(model_fn, x, mask_id, counter)
        count = torch.ceil(masked.sum(1).float() / (steps - i)).long()
        x_new, conf = unmask_step(logits, x, masked, mask_id, count=count, temperature=cfg.temperature,
                                  generator=generator)
        revealed = masked & (x_new != mask_id)
        conf_dec = torch.where(revealed, conf, conf_dec)
        x = x_new
        if i not in prunes:
            continue
        # greedy completion from this step's logits (no extra pass), then score it
        lg = logits.clone()
        if mask_id < lg.shape[-1]:
            lg[..., mask_id] = float("-inf")
        greedy = torch.where(x == mask_id, lg.argmax(-1), x)
        scores = _score(greedy, lg, gen_slots, verifier, cfg, counter)
        new_w = prunes[i]
        n_par = max(1, math.ceil(new_w / cfg.branches))
        s = scores.reshape(P, w).masked_fill(_duplicates(x.reshape(P, w, L)), float("-inf"))
        order = torch.sort(s, dim=1, descending=True, stable=True).indices  # duplicates last
        slot = torch.arange(new_w)
        src = order[:, slot % n_par] + torch.arange(P).unsqueeze(1) * w  # (P, new_w) rows of x
        src = src.flatten()
        x, conf_dec, gen_slots = x[src], conf_dec[src], gen_slots[src]
        if cfg.remask:
            child = (slot >= n_par).repeat(P)
            decoded = gen_slots & (x != mask_id)
            x = partial_remask(x, conf_dec, decoded, child, cfg.remask_tokens, cfg.remask_pool, mask_id,
                               generator)
            conf_dec = torch.where(x == mask_id, torch.full_like(conf_dec, float("inf")), conf_dec)
        w = new_w
    final = _score(x, None, gen_slots, verifier, cfg, counter, conf_dec)
    cands, scores = x.reshape(P, w, L), final.reshape(P, w)
    answers = weighted_vote(cands, key_fn(x).reshape(P, w), scores)
    return answers, {"survivors": cands, "scores": scores}


def _score(x, logits, gen_slots, verifier, cfg: PrismConfig, counter, conf_dec=None) -> torch.Tensor:
    """Self-verification p(yes), or (ablation) the mean confidence of the generated tokens: under
    ``logits`` for a greedy completion, else the confidences recorded at decoding."""
    if cfg.self_verify:
        return verifier(x, counter)
    if logits is not None:
        conf = torch.softmax(logits.float(), -1).gather(-1, x.unsqueeze(-1)).squeeze(-1)
    else:
        conf = conf_dec
    n = gen_slots.sum(1).clamp_min(1)
    return torch.where(gen_slots, conf, torch.zeros_like(conf)).sum(1) / n


def verification_by_step(model_fn: ModelFn, prompts: torch.Tensor, steps: int, mask_id: int,
                         verifier: SelfVerifier, *, temperature: float = 0.7,
                         generator: torch.Generator | None = None, counter: EvalCounter | None = None):
    """One decode per problem; after each step the greedy completion (from that step's logits) is
    verified. Returns (completions (steps, P, L), scores (steps, P)); NFE = 2 * steps per problem."""
    x, comps, scores = prompts.clone(), [], []
    for i in range(steps):
        masked = x == mask_id
        logits = forward(model_fn, x, mask_id, counter)
        count = torch.ceil(masked.sum(1).float() / (steps - i)).long()
        x, _ = unmask_step(logits, x, masked, mask_id, count=count, temperature=temperature, generator=generator)
        lg = logits.clone()
        if mask_id < lg.shape[-1]:
            lg[..., mask_id] = float("-inf")
        greedy = torch.where(x == mask_id, lg.argmax(-1), x)
        comps.append(greedy)
        scores.append(verifier(greedy, counter))
    return torch.stack(comps), torch.stack(scores)
