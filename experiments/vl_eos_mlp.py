"""Claims of ``vl_eos_mlp`` (docs/methods/eos_variational.md): GD sits at 2/lr; variational GD settles flatter,
the more so with larger posterior variance sigma^2 and fewer MC samples N_s, below its H_crit.

Every number is a late-training mean of the SharpnessCallback's measurements (the last 20% of steps,
``sharpness/late_*`` in each variant's metrics), averaged over seeds; spreads are standard errors over
seeds. H_crit uses |g|^2 averaged over the same late window, projected on the top Hessian eigenvector
(the choice of docs/methods/eos_variational.md) and, for comparison, the full gradient norm.
"""

from __future__ import annotations

import math
from collections import defaultdict

from suite.results import Claim, VariantResult

LATE = "sharpness/late_lambda_max"


def _group(variants: dict[str, VariantResult], cfg) -> dict[str, list[VariantResult]]:
    """Variant base name (without __seed=...) -> its runs over seeds; sweep points are skipped."""
    out = defaultdict(list)
    for name, var in variants.items():
        if "@" not in name and LATE in var.metrics:
            out[name.split("__")[0]].append(var)
    return out


def _spec(base: str, cfg) -> dict:
    over = dict(cfg.study.variants[base]) if cfg.study is not None and base in cfg.study.variants else {}
    return {"optimizer": over.get("module.optimizer", cfg.module.optimizer),
            "sigma_sq": float(over.get("module.sigma_sq", cfg.module.sigma_sq)),
            "mc_samples": int(over.get("module.mc_samples", cfg.module.mc_samples))}


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _late_window(groups: dict[str, list[VariantResult]], cfg) -> str:
    """The late window in words: its steps and how many sharpness measurements it averages."""
    steps = int(cfg.trainer.max_steps)
    every = int(cfg.callbacks.sharpness.every_n_steps) if "sharpness" in cfg.callbacks else None
    counts = sorted({int(v.metrics.get("sharpness/late_n", 0)) for runs in groups.values() for v in runs})
    return (f"late window = the last 20% of the {steps} steps (steps >= {0.8 * steps:g}), mean of the "
            f"{'/'.join(map(str, counts))} sharpness measurements taken every {every} steps in it")


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    groups = _group(variants, cfg)
    lr = float(cfg.module.lr)
    edge = 2.0 / lr
    window = _late_window(groups, cfg)
    out: dict[str, Claim] = {}
    late = {b: _mean_se([v.metrics[LATE] for v in runs]) for b, runs in groups.items()}
    specs = {b: _spec(b, cfg) for b in groups}
    n_seeds = min((len(r) for r in groups.values()), default=0)

    gd = [b for b in groups if specs[b]["optimizer"] == "gd"]
    if gd:
        ratio = late[gd[0]][0] / edge
        per_seed = ", ".join(f"{v.metrics[LATE] / edge:.3f}" for v in groups[gd[0]])
        out["gd_at_edge"] = Claim(abs(ratio - 1) <= 0.10, round(ratio, 4), 1.0,
                                  f"GD late mean sharpness / (2/lr), mean over {len(groups[gd[0]])} seed(s) "
                                  f"(per seed {per_seed}), {window}; lambda={late[gd[0]][0]:.4g} "
                                  f"(se {late[gd[0]][1]:.2g}), 2/lr={edge:.4g}; holds within 10%")
    else:
        out["gd_at_edge"] = Claim.uncomputable("no GD variant in this run", 1.0)

    vgd = {b: s for b, s in specs.items() if s["optimizer"] == "vgd"}
    by_ns: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for b, s in vgd.items():
        by_ns[s["mc_samples"]].append((s["sigma_sq"], b))
    sigmas = sorted({s["sigma_sq"] for s in vgd.values()})
    if gd and len(sigmas) >= 2:
        gd_late = late[gd[0]][0]
        ok, table = True, {}
        for ns, items in sorted(by_ns.items()):
            items.sort()
            vals = [late[b][0] for _, b in items]
            table[f"N_s={ns}"] = {f"{s:g}": round(late[b][0], 4) for s, b in items}
            ok &= all(a >= c for a, c in zip(vals, vals[1:]))
            ok &= all(late[b][0] < gd_late for s, b in items if s >= 3e-5)
        out["vl_flatter"] = Claim(ok, table, {"gd": round(gd_late, 4)},
                                  f"late mean sharpness per (N_s, sigma^2) over {n_seeds} seed(s), {window}: "
                                  "non-increasing in sigma^2 for each N_s and below GD's for sigma^2 >= 3e-5")
    else:
        out["vl_flatter"] = Claim.uncomputable("needs GD and >= 2 sigma^2 values of VGD")

    pairs = {}
    for s in (3e-5, 1e-4):
        one = [b for b, sp in vgd.items() if math.isclose(sp["sigma_sq"], s) and sp["mc_samples"] == 1]
        many = [b for b, sp in vgd.items() if math.isclose(sp["sigma_sq"], s) and sp["mc_samples"] > 1]
        if one and many:
            pairs[s] = (one[0], many[0])
    if len(pairs) == 2 and n_seeds >= 2:
        ok, table = True, {}
        for s, (b1, bn) in pairs.items():
            # paired by seed: both start from the same GD trunk and draw the same first noise sample
            one = {v.seed: v.metrics[LATE] for v in groups[b1]}
            many = {v.seed: v.metrics[LATE] for v in groups[bn]}
            common = sorted(set(one) & set(many), key=str)
            diff, se = _mean_se([many[k] - one[k] for k in common])
            se_unpaired = math.hypot(late[bn][1], late[b1][1])
            table[f"{s:g}"] = {"diff": round(diff, 4), "se": round(se, 4), "se_unpaired": round(se_unpaired, 4),
                               "n_seeds": len(common)}
            ok &= len(common) >= 2 and diff > 2 * se
        out["fewer_samples_flatter"] = Claim(ok, table, "diff > 2 se",
                                             "late sharpness(N_s=4) - late sharpness(N_s=1), same steps and seed "
                                             "(same GD trunk), mean over seeds; se = standard error over seeds of "
                                             "the paired differences (se_unpaired: the two variants' standard "
                                             f"errors in quadrature, for reference); {window}")
    else:
        out["fewer_samples_flatter"] = Claim.uncomputable(
            f"needs N_s=1 and N_s=4 at sigma^2 = 3e-5 and 1e-4 with >= 2 seeds (have {len(pairs)} pair(s), "
            f"{n_seeds} seed(s))")

    if vgd:
        ratios, ok = {}, True
        for b in sorted(vgd):
            runs = groups[b]
            rp = sum(v.metrics.get("sharpness/late_ratio_hcrit_proj", float("nan")) for v in runs) / len(runs)
            rf = sum(v.metrics.get("sharpness/late_ratio_hcrit_full", float("nan")) for v in runs) / len(runs)
            hp = sum(v.metrics.get("sharpness/late_hcrit_proj", float("nan")) for v in runs) / len(runs)
            ratios[b] = {"proj": round(rp, 4), "full": round(rf, 4), "hcrit_proj": round(hp, 4),
                         "lambda": round(late[b][0], 4), "max_proj_over_seeds": round(max(
                             v.metrics.get("sharpness/late_ratio_hcrit_proj", float("nan")) for v in runs), 4)}
            ok &= rp <= 1.1  # NaN (no measurement) fails
        out["hcrit_bounds_vl"] = Claim(ok, ratios, 1.1,
                                       "late mean sharpness / H_crit per VGD variant (mean over seeds); H_crit = root "
                                       "of H (1 + H^2 sigma^2 / (N_s |g|^2)) = 2/lr with |g|^2 averaged over the late "
                                       "window: 'proj' = (g . v1)^2, v1 the top Hessian eigenvector (the claim's "
                                       "convention), 'full' = |g|^2 (full gradient norm); g = full-batch gradient at "
                                       f"the mean weights; holds if every proj <= 1.1; {window}")
    else:
        out["hcrit_bounds_vl"] = Claim.uncomputable("no VGD variant in this run", 1.1)
    return out
