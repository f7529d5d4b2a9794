"""Accuracy against compute for every test-time search method (Prism's headline comparison).

``evaluate_problems`` runs, on one batch of P problems: N candidates per problem (the first n of them are
best-of-n's candidates, so every n shares draws), scored by self-verification; single sample, self-verified
best-of-n, majority vote, oracle best-of-n (any candidate right: an upper bound, not a method), Prism at each
initial width and its ablations (no partial remasking; no self-verification). NFE are measured by
``core.utils.nfe.EvalCounter`` (every forward pass, verification included) and kept as totals, so batches add up.
``summarize`` turns the accumulated results into accuracies with 95% CIs, paired gains over the single
sample, and self-verification AUROCs (pooled, within a problem, by difficulty and by denoising step).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from core.eval.auroc import auroc, within_group_auroc
from core.utils.nfe import EvalCounter
from core.search.prism import (
    PrismConfig,
    SelfVerifier,
    best_of_n,
    majority_vote,
    prism,
    sample_candidates,
    verification_by_step,
)

PRISM_VARIANTS = {"prism": {}, "prism_no_remask": {"remask": False}, "prism_no_sv": {"self_verify": False}}


@dataclass
class SearchConfig:
    """The budget sweep: best-of-n for n in ``bon_sizes``; Prism for N in ``prism_n`` (ablations at the
    largest), with the PrismConfig knobs below; AUROC by denoising step on the first ``by_step_problems``."""

    temperature: float = 0.7
    bon_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    prism_n: list[int] = field(default_factory=lambda: [16])
    min_width: int = 2
    window: list[float] = field(default_factory=lambda: [0.1, 0.6])
    prune_every: int = 1
    shrink: float = 2.0
    branches: int = 2
    remask_tokens: int = 1
    remask_pool: int = 3
    by_step_problems: int = 500

    @classmethod
    def from_dict(cls, spec: dict, key: str = "search") -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - names)
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {unknown}; expected some of {sorted(names)}")
        cfg = cls(**spec)
        if 1 not in cfg.bon_sizes or min(cfg.bon_sizes) < 1:
            raise ValueError(f"{key}.bon_sizes must contain 1 (the single sample) and only n >= 1, got {cfg.bon_sizes}")
        if not cfg.prism_n or min(cfg.prism_n) < 1:
            raise ValueError(f"{key}.prism_n must be a non-empty list of widths >= 1, got {cfg.prism_n}")
        if len(cfg.window) != 2 or not 0 <= cfg.window[0] <= cfg.window[1] <= 1:
            raise ValueError(f"{key}.window must be [lo, hi] with 0 <= lo <= hi <= 1, got {cfg.window}")
        return cfg

    def prism_config(self, n_initial: int, **over) -> PrismConfig:
        return PrismConfig(n_initial=n_initial, min_width=self.min_width, window=tuple(self.window),
                           prune_every=self.prune_every, shrink=self.shrink, branches=self.branches,
                           remask_tokens=self.remask_tokens, remask_pool=self.remask_pool,
                           temperature=self.temperature, **over)


@dataclass
class BatchResult:
    """One batch of P problems: ``correct[method]`` (P,) bool, ``nfe_total[method]`` summed over the batch,
    the self-verification scores and correctness of the N candidates (P, N), and optionally by-step
    scores / correctness (T, P') of one trajectory's greedy completions."""

    correct: dict[str, torch.Tensor]
    nfe_total: dict[str, float]
    scores: torch.Tensor
    right: torch.Tensor
    step_scores: torch.Tensor | None = None
    step_right: torch.Tensor | None = None


@torch.no_grad()
def evaluate_problems(model_fn, task, problems: torch.Tensor, cfg: SearchConfig, generator: torch.Generator,
                      by_step: int = 0) -> BatchResult:
    """Every method on ``problems`` (P, .) of ``task``; ``by_step`` > 0: also the AUROC-by-step trajectories
    of the first ``by_step`` problems."""
    steps, nmax, mask_id = task.n_steps, max(cfg.bon_sizes), task.mask_id
    P, prompts = len(problems), task.prompts(problems)
    verifier = SelfVerifier(model_fn, task.verify_inputs, mask_id, task.yes_id, task.no_id)
    dec, ver = EvalCounter(), EvalCounter()
    cands = sample_candidates(model_fn, prompts, nmax, steps, mask_id, temperature=cfg.temperature,
                              generator=generator, counter=dec)
    flat = cands.flatten(0, 1)
    scores = verifier(flat, ver).reshape(P, nmax)
    right = task.check(flat, problems.repeat_interleave(nmax, 0)).reshape(P, nmax)
    keys = task.answer_key(flat).reshape(P, nmax)
    per_dec, per_ver = dec.items / nmax, ver.items / nmax  # passes per candidate slot, summed over problems
    correct, nfe = {}, {}
    for n in sorted(cfg.bon_sizes):  # the first n candidates are n independent samples
        c, s, k = cands[:, :n], scores[:, :n], keys[:, :n]
        name = "single" if n == 1 else f"bon_sv@{n}"
        correct[name] = task.check(best_of_n(c, s), problems)
        nfe[name] = n * (per_dec + (per_ver if n > 1 else 0.0))
        if n > 1:
            correct[f"majority@{n}"] = task.check(majority_vote(c, k), problems)
            nfe[f"majority@{n}"] = n * per_dec
            correct[f"oracle@{n}"] = right[:, :n].any(1)
            nfe[f"oracle@{n}"] = n * per_dec
    for n0 in cfg.prism_n:
        for vname, over in PRISM_VARIANTS.items():
            if vname != "prism" and n0 != max(cfg.prism_n):
                continue  # ablations at the largest width only
            cnt = EvalCounter()
            ans, _ = prism(model_fn, prompts, steps, mask_id, task.answer_key, cfg.prism_config(n0, **over),
                           verifier, generator=generator, counter=cnt)
            correct[f"{vname}@{n0}"] = task.check(ans, problems)
            nfe[f"{vname}@{n0}"] = float(cnt.items)
    out = BatchResult(correct, nfe, scores, right)
    nb = min(by_step, P)
    if nb > 0:
        comps, st = verification_by_step(model_fn, prompts[:nb], steps, mask_id, verifier,
                                         temperature=cfg.temperature, generator=generator)
        out.step_scores = st
        out.step_right = torch.stack([task.check(comps[i], problems[:nb]) for i in range(steps)])
    return out


def summarize(results: list[BatchResult], steps: int) -> tuple[dict[str, float], list[tuple[str, float, float, float]]]:
    """(metrics ``test/...``, rows (method, NFE per problem, accuracy, 95% CI)) over all batches."""
    metrics: dict[str, float] = {}
    n_total = sum(len(r.right) for r in results)
    single = torch.cat([r.correct["single"] for r in results]).float()
    rows = []
    for name in results[0].correct:
        c = torch.cat([r.correct[name] for r in results]).float()
        acc, n = float(c.mean()), len(c)
        ci = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n)
        diff = c - single  # paired with the single sample on the same problems
        diff_ci = 1.96 * float(diff.std()) / math.sqrt(n) if n > 1 else float("nan")
        nfe = sum(r.nfe_total[name] for r in results) / n_total
        metrics.update({f"test/{name}/acc": acc, f"test/{name}/ci95": ci, f"test/{name}/nfe": nfe,
                        f"test/{name}/gain_vs_single": float(diff.mean())})
        if diff_ci == diff_ci:
            metrics[f"test/{name}/gain_ci95"] = diff_ci
        rows.append((name, nfe, acc, ci))
    s, r = torch.cat([b.scores for b in results]), torch.cat([b.right for b in results])
    metrics.update(_auroc_metrics(s, r))
    by = [b for b in results if b.step_scores is not None]
    if by:
        st, sr = torch.cat([b.step_scores for b in by], 1), torch.cat([b.step_right for b in by], 1)
        for i in range(steps):
            au = auroc(st[i], sr[i])
            if au == au:  # JSON has no NaN: absent when every completion is right or every one wrong
                metrics[f"test/sv_auroc_step{i + 1}of{steps}"] = au
            metrics[f"test/greedy_acc_step{i + 1}of{steps}"] = float(sr[i].float().mean())
    metrics["test/n_problems"] = float(n_total)
    metrics["test/steps"] = float(steps)
    return metrics, rows


def _auroc_metrics(s: torch.Tensor, r: torch.Tensor) -> dict[str, float]:
    """Pooled AUROC of p(yes) for right vs wrong candidates; the ranking among one problem's own candidates
    (what best-of-N needs); the pooled AUROC by difficulty (the fraction of the problem's candidates that are
    right); mean p(yes) of right and wrong candidates. Undefined AUROCs are left out (JSON has no NaN)."""
    out = {"test/sv_n": float(s.numel())}
    au = auroc(s, r)
    if au == au:
        out["test/sv_auroc"] = au
    wp, n_mixed = within_group_auroc(s, r)
    if wp == wp:
        out["test/sv_auroc_within_problem"] = wp
    out["test/sv_n_mixed_problems"] = float(n_mixed)
    rate = r.float().mean(1, keepdim=True).expand_as(r)
    for lo, hi in ((0.0, 0.34), (0.34, 0.67), (0.67, 1.01)):
        sel = (rate >= lo) & (rate < hi)
        au = auroc(s[sel], r[sel])
        if au == au:
            out[f"test/sv_auroc_passrate_{lo:.2f}-{min(hi, 1):.2f}"] = au
    out["test/sv_mean_p_yes_right"] = float(s[r].mean()) if r.any() else 0.0
    out["test/sv_mean_p_yes_wrong"] = float(s[~r].mean()) if (~r).any() else 0.0
    return out
