"""Claims of ``world_model_grid`` (docs/methods/world_model_memory.md; issue 14).

All accuracies count only the tiles a move newly reveals; "far" revisits are tiles whose map cell was
last seen more than K (the context length) steps earlier, so they are outside the context window.

* ``memory_keeps_revisits``: the memory variant's teacher-forced far-revisit accuracy >= 0.9 and at
  least 0.3 above the context-only variant's.
* ``context_only_forgets``: the context-only variant's far-revisit accuracy within 0.05 of its accuracy
  on never-seen tiles (it can do no better than map statistics there).
* ``rollouts_self_consistent``: in free-running rollouts, the memory variant regenerates far-revisited
  tiles as it generated them before more often than the context-only variant does.
"""

from __future__ import annotations

import math

from suite.results import Claim, VariantResult


def _pick(variants: dict[str, VariantResult], name: str) -> VariantResult | None:
    """The variant called ``name`` (or ``name__seed=...``, first seed)."""
    for key in sorted(variants):
        if key == name or key.startswith(name + "__"):
            return variants[key]
    return None


def _binom_se(p: float, n: float) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1.0))


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    mem, ctx = _pick(variants, "memory"), _pick(variants, "context")
    K = int(cfg.data.context)
    if mem is None or ctx is None:
        missing = "Claims need the study's 'memory' and 'context' variants"
        return {k: Claim.uncomputable(missing) for k in
                ("memory_keeps_revisits", "context_only_forgets", "rollouts_self_consistent")}
    m, c = mem.metrics, ctx.metrics
    out: dict[str, Claim] = {}
    need = ("test/acc_far", "test/acc_new")
    if not all(k in m and k in c for k in need):
        detail = "no far-revisit or new tiles in the test trajectories (too short for the context length)"
        return {k: Claim.uncomputable(detail) for k in
                ("memory_keeps_revisits", "context_only_forgets", "rollouts_self_consistent")}
    mf, cf, cn = m["test/acc_far"], c["test/acc_far"], c["test/acc_new"]
    nf, nn_ = m["test/acc_far_count"], c["test/acc_new_count"]
    guess = c.get("test/guesser_acc_far", float("nan"))
    out["memory_keeps_revisits"] = Claim(
        mf >= 0.9 and mf - cf >= 0.3, mf, {"min": 0.9, "context_only": cf, "min_gap": 0.3},
        f"teacher-forced accuracy on newly revealed tiles last seen > K={K} steps earlier, {int(nf)} tiles of "
        f"{cfg.data.n_test} test trajectories on unseen maps (binomial s.e. memory {_binom_se(mf, nf):.3f}, "
        f"context {_binom_se(cf, nf):.3f}); map-statistics guesser on the same tiles {guess:.3f}")
    se = math.hypot(_binom_se(cf, nf), _binom_se(cn, nn_))
    out["context_only_forgets"] = Claim(
        abs(cf - cn) <= 0.05, cf - cn, 0.05,
        f"context-only far-revisit accuracy {cf:.3f} minus its accuracy on never-seen tiles {cn:.3f} "
        f"({int(nf)} and {int(nn_)} tiles, s.e. of the difference {se:.3f}); holds when |difference| <= 0.05; "
        f"chance is 1/{cfg.data.colours} = {1 / cfg.data.colours:.3f}")
    key = "test/self_consistency"
    if key in m and key in c:
        ms, cs, ns = m[key], c[key], m[key + "_count"]
        se = math.hypot(_binom_se(ms, ns), _binom_se(cs, ns))
        out["rollouts_self_consistent"] = Claim(
            ms - cs > 2 * se, ms, cs,
            f"free-running rollouts of the test action sequences from the first true view: fraction of far-"
            f"revisited newly revealed tiles ({int(ns)}) equal to the model's own earlier generation of that map "
            f"cell; memory {ms:.3f} vs context-only {cs:.3f} (chance-level agreement from each rollout's colour "
            f"frequencies: memory {m.get('test/self_consistency_chance', float('nan')):.3f}, context-only "
            f"{c.get('test/self_consistency_chance', float('nan')):.3f}); holds when the gap exceeds 2 s.e. "
            f"({2 * se:.3f})")
    else:
        out["rollouts_self_consistent"] = Claim.uncomputable("rollouts were not evaluated (module.eval_rollouts)")
    rec = _pick(variants, "recurrent")
    if rec is not None and "test/acc_far" in rec.metrics:
        r = rec.metrics
        out["recurrent_far_accuracy"] = Claim(
            r["test/acc_far"] - cf >= 0.3, r["test/acc_far"], cf,
            "informational: recurrent-state variant's far-revisit accuracy vs context-only (holds when >= 0.3 "
            f"above); its rollout self-consistency {r.get('test/self_consistency', float('nan')):.3f}")
    return out
