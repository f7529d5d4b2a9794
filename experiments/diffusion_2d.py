"""Claims of ``diffusion_2d``: the model's samples are closer to held-out data than a Gaussian fit's,
and within 2x of the data floor (an equally large training subsample against the same held-out set)."""

from __future__ import annotations

import math

from suite.results import Claim, VariantResult


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    out = {}
    for name, var in variants.items():
        m = var.metrics
        n_rep = int(cfg.module.eval_repeats)
        model, gauss, floor = m["test/sliced_w2"], m["test/gauss_sliced_w2"], m["test/floor_sliced_w2"]
        spread = math.hypot(m["test/sliced_w2_std"], m["test/gauss_sliced_w2_std"])
        suffix = "" if name == "main" else f"[{name}]"
        detail = (f"sliced W2 (256 projections) to held-out data, mean over {n_rep} independent sample sets of "
                  f"{cfg.module.eval_samples}; spread = std of model and Gaussian-fit metrics added in quadrature")
        if n_rep < 2:
            out["beats_gaussian_fit" + suffix] = Claim.uncomputable(detail + "; one repeat gives no spread", gauss)
        else:
            out["beats_gaussian_fit" + suffix] = Claim(gauss - model > spread, model, gauss,
                                                       detail + f" = {spread:.4g}")
        out["near_data_floor" + suffix] = Claim(
            model <= 2.0 * floor, model / floor if floor > 0 else None, 2.0,
            f"ratio of the model's sliced W2 ({model:.4g}) to the floor ({floor:.4g}): a training subsample of the "
            "same size vs the same held-out sets; holds when <= 2")
    return out
