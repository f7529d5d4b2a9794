"""``dae_memorization``: the two-layer ReLU DAE at n_train in {5, 50, 500, 4000} (arXiv 2512.20963).

Claims (from each variant's test metrics, see modules.relu_dae):

* ``spiky_when_memorizing``: the spread of the hidden representation (coefficient of variation across
  units) of the training inputs is larger at the smallest n than at the largest, by more than the
  spread across seeds;
* ``rows_store_samples``: the mean max cosine of the active encoder rows to the centred training images
  is > 0.9 at the smallest n and < 0.6 at the largest;
* ``generalization_gap_shrinks``: test minus train denoising loss falls monotonically as n grows.
"""

from __future__ import annotations

import math
from collections import defaultdict

from suite.results import Claim, VariantResult


def n_train_of(var: VariantResult) -> int | None:
    """The variant's data.n_train: from its overrides, else from its name (``n_train=5__seed=0``)."""
    if var.overrides.get("data.n_train") is not None:
        return int(var.overrides["data.n_train"])
    for part in var.name.split("@")[0].split("__"):
        if part.startswith("n_train="):
            return int(part.split("=", 1)[1])
    return None


def by_n(variants: dict[str, VariantResult], key: str) -> dict[int, list[float]]:
    """{n_train: [metric per seed]} over the variants that logged ``key`` (e.g. ``test/row_cosine``)."""
    out: dict[int, list[float]] = defaultdict(list)
    for var in variants.values():
        n = n_train_of(var)
        if n is not None and var.metrics.get(key) is not None:
            out[int(n)].append(float(var.metrics[key]))
    return dict(sorted(out.items()))


def _mean_std(v: list[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan"))


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    out: dict[str, Claim] = {}
    spread = by_n(variants, "test/spread_cv")
    if len(spread) < 2:
        out["spiky_when_memorizing"] = Claim.uncomputable("needs variants at two n_train values")
    else:
        n_lo, n_hi = min(spread), max(spread)
        (m_lo, s_lo), (m_hi, s_hi) = _mean_std(spread[n_lo]), _mean_std(spread[n_hi])
        detail = (
            f"coefficient of variation across hidden units of h = relu(W(x + 0.2 eps - mu)) on the training "
            f"set, mean over seeds: n={n_lo}: {m_lo:.3f} (seeds {len(spread[n_lo])}), n={n_hi}: {m_hi:.3f} "
            f"(seeds {len(spread[n_hi])}); margin = seed std added in quadrature"
        )
        if math.isnan(s_lo) or math.isnan(s_hi):
            out["spiky_when_memorizing"] = Claim.uncomputable(detail + "; one seed gives no spread", m_hi)
        else:
            margin = math.hypot(s_lo, s_hi)
            out["spiky_when_memorizing"] = Claim(
                m_lo - m_hi > margin, m_lo, m_hi, detail + f" = {margin:.3g}"
            )
    cos = by_n(variants, "test/row_cosine")
    if len(cos) < 2:
        out["rows_store_samples"] = Claim.uncomputable("needs variants at two n_train values")
    else:
        n_lo, n_hi = min(cos), max(cos)
        c_lo, c_hi = _mean_std(cos[n_lo])[0], _mean_std(cos[n_hi])[0]
        out["rows_store_samples"] = Claim(
            c_lo > 0.9 and c_hi < 0.6,
            {"small_n": c_lo, "large_n": c_hi},
            {"small_n": "> 0.9", "large_n": "< 0.6"},
            "mean over active encoder rows (rows with W(x - mu) > 0 on some training image) of the max "
            f"cosine to the mean-centred training images, averaged over seeds; n={n_lo} vs n={n_hi}",
        )
    gap = by_n(variants, "test/generalization_gap")
    if len(gap) < 3:
        out["generalization_gap_shrinks"] = Claim.uncomputable(
            "needs variants at three or more n_train values"
        )
    else:
        means = {n: _mean_std(v)[0] for n, v in gap.items()}
        vals = list(means.values())
        falls = all(a > b for a, b in zip(vals, vals[1:]))
        out["generalization_gap_shrinks"] = Claim(
            falls,
            {str(n): m for n, m in means.items()},
            "strictly decreasing in n",
            "held-out minus training denoising MSE per pixel at sigma = 0.2 with fixed noise (held-out: the "
            f"test split's {cfg.data.get('n_val', 200)}+ non-validation digits), mean over seeds, by n_train",
        )
    return out
