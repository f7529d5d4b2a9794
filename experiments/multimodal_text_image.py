"""Claims of ``multimodal_text_image`` (Diffuse Everything on Shapes image + caption pairs).

* ``joint_consistency``: unconditional pairs (image and caption sampled jointly, equal times) are
  consistent -- the caption parses and the exact Shapes evaluator finds it true of the image (strict) --
  more than twice as often as the same captions shuffled across pairs (mean over random derangements).
* ``noisy_guidance_helps``: text -> image GenEval overall with noisy guidance (unconditional branch = the
  same model with the caption noised to ``guidance_time``, inside ``guidance_window``) exceeds the score
  without guidance by more than the standard error of the difference (the two binomial SEs of the overall
  score in quadrature; same prompts and seed, so this overstates the noise of a paired difference).
"""

from __future__ import annotations

import math

from suite.results import Claim, VariantResult


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    out: dict[str, Claim] = {}
    for name, var in variants.items():
        m = var.metrics
        suffix = "" if name == "main" else f"[{name}]"

        def g(k: str, m: dict = m):
            return m.get(f"test/{k}")

        if g("joint/consistency") is None:
            out["joint_consistency" + suffix] = Claim.uncomputable(f"variant {name!r} has no test metrics")
            out["noisy_guidance_helps" + suffix] = Claim.uncomputable(f"variant {name!r} has no test metrics")
            continue
        cons, shuf = g("joint/consistency"), g("joint/shuffled")
        n = int(g("joint/n"))
        rounds = cfg.module.shuffle_rounds
        out["joint_consistency" + suffix] = Claim(
            cons > 2 * shuf,
            cons,
            2 * shuf,
            f"{n} unconditional pairs ({cfg.module.sample_steps} steps): consistency {cons:.3f} +- "
            f"{g('joint/consistency_se'):.3f} (binomial se; captions parsed {g('joint/parse_rate'):.3f}) vs "
            f"shuffled {shuf:.3f} +- {g('joint/shuffled_se'):.3f} (same captions over {rounds} random "
            f"derangements of the images); holds when consistency > 2 x shuffled. Single seed.",
        )
        w = cfg.module.guidance
        base, guided = g("t2i/geneval"), g("t2i_guided/geneval")
        se = math.hypot(g("t2i/geneval_se"), g("t2i_guided/geneval_se"))
        detail = (
            f"GenEval overall (mean of 6 category strict pass rates) on {int(g('t2i/n_prompts'))} prompts, "
            f"1 image each: noisy guidance w={w:g} (caption noised to t={cfg.module.guidance_time:g}, window "
            f"{list(cfg.module.guidance_window)}) {guided:.3f} +- {g('t2i_guided/geneval_se'):.3f} vs none "
            f"{base:.3f} +- {g('t2i/geneval_se'):.3f}; se of the difference {se:.3f} (quadrature)"
        )
        if se == 0:
            out["noisy_guidance_helps" + suffix] = Claim.uncomputable(detail + "; zero standard error", guided)
        else:
            out["noisy_guidance_helps" + suffix] = Claim(guided - base > se, guided - base, se, detail)
    return out
