"""Claims of ``t2i_shapes``, the base text-to-image model on Shapes-GenEval.

* ``learns_composition``: GenEval overall (the model's default guidance, the largest w tested)
  > 0.2 and > 1.5x the text-ignoring floor (ground-truth renders judged against other prompts).
* ``guidance_helps_attributes``: the colours-category score with guidance exceeds the score without
  (w = 1) by more than twice the standard error of the difference (binomial over images, the two
  independent image sets added in quadrature).
"""

from __future__ import annotations

import math

from suite.results import Claim, VariantResult


def _guidances(cfg) -> tuple[float, float]:
    ws = sorted(float(w) for w in cfg.callbacks.geneval.test_guidances)
    return ws[0], ws[-1]


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    out = {}
    w_lo, w_hi = _guidances(cfg)
    lo, hi = f"test/geneval_w{w_lo:g}", f"test/geneval_w{w_hi:g}"
    for name, var in variants.items():
        m = var.metrics
        suffix = "" if name == "main" else f"[{name}]"
        if f"{hi}/overall" not in m:
            out["learns_composition" + suffix] = Claim.uncomputable("no GenEval metrics in this run")
            continue
        overall, se, floor = m[f"{hi}/overall"], m[f"{hi}/overall_se"], m["test/geneval/floor"]
        n = int(m.get(f"{hi}/colors_n", 0)) if f"{hi}/colors_n" in m else None
        out["learns_composition" + suffix] = Claim(
            overall > 0.2 and overall > 1.5 * floor,
            overall,
            max(0.2, 1.5 * floor),
            f"GenEval overall at guidance w={w_hi:g} = {overall:.3f} +- {se:.3f} (mean of 6 category "
            f"pass rates, binomial se); needs > 0.2 and > 1.5 x text-ignoring floor {floor:.3f} "
            f"(ground-truth renders vs 5 random permutations of the prompts)",
        )
        c_lo, c_hi = m[f"{lo}/colors"], m[f"{hi}/colors"]
        se_diff = math.hypot(m[f"{lo}/colors_se"], m[f"{hi}/colors_se"])
        detail = (
            f"colours category: w={w_hi:g} {c_hi:.3f} vs w={w_lo:g} {c_lo:.3f}; se of the difference "
            f"{se_diff:.3f} (binomial per image set, in quadrature){'' if n is None else f', n={n}'}"
        )
        if se_diff == 0:
            out["guidance_helps_attributes" + suffix] = Claim.uncomputable(
                detail + "; zero standard error", c_hi
            )
        else:
            out["guidance_helps_attributes" + suffix] = Claim(
                c_hi - c_lo > 2 * se_diff, c_hi - c_lo, 2 * se_diff, detail
            )
    return out
