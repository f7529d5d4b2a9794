"""Claims of ``rl_geneval`` (docs/methods/rl_elbo.md; issue 11): RL fine-tuning of the Shapes
text-to-image flow at one NFE budget per variant, scored by the strict GenEval of all held-out
evaluation prompts (callbacks/rl_watch.py's ``test/geneval``, at the end of each run).

A combination's GenEval is the mean over its seeds; its standard error is the spread over seeds
(sd / sqrt(n)) when there are >= 2 seeds, else the binomial SE of the one run's evaluation
(``test/geneval_se``: sqrt(sum_c p_c (1 - p_c) / n_c) / 6 over the six categories); the details
say which.

* ``elbo_beats_per_step``: for both objectives (epg, ppo_clip) with SDE rollouts,
  GenEval(elbo) > GenEval(per_step).
* ``estimator_matters_more_than_loss``: min over objectives of GenEval(elbo) - GenEval(per_step)
  exceeds max over estimators of |GenEval(epg) - GenEval(ppo_clip)|.
* ``no_reward_hacking``: the best combination's FID-style distance / the base model's <= 1.5.
* ``improves_base``: best GenEval - the base model's (same prompts, same noise) >= 0.1.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from suite.results import Claim, VariantResult

KEY = "test/geneval"


def _design(var: VariantResult, cfg) -> tuple[str, str, str]:
    over = var.overrides
    return tuple(str(over.get(f"module.{k}", cfg.module[k])) for k in ("objective", "likelihood", "sampler"))


def combination_table(variants: dict[str, VariantResult], cfg) -> dict[tuple, dict]:
    """(objective, likelihood, sampler) -> mean / se / n of GenEval, base, FID ratio, NFE to target."""
    runs = defaultdict(list)
    for name, var in variants.items():
        if "@" not in name and KEY in var.metrics:
            runs[_design(var, cfg)].append(var)
    table = {}
    for design, vs in runs.items():
        g = [v.metrics[KEY] for v in vs]
        n, mean = len(g), sum(g) / len(g)
        if n >= 2:
            se, how = math.sqrt(sum((x - mean) ** 2 for x in g) / (n - 1) / n), "seeds"
        else:
            se, how = float(vs[0].metrics.get("test/geneval_se", float("nan"))), "binomial"
        target = [v.metrics.get(f"test/nfe_to_base_plus_{_gain(cfg):g}") for v in vs]
        table[design] = {
            "geneval": mean, "se": se, "se_from": how, "n": n,
            "base": sum(v.metrics["test/base_geneval"] for v in vs) / n,
            "base_se": vs[0].metrics.get("test/base_geneval_se"),
            "fid_ratio": sum(v.metrics["test/fid_ratio"] for v in vs) / n,
            "nfe": sum(v.metrics["test/nfe"] for v in vs) / n,
            "nfe_to_target": [None if t is None or not math.isfinite(t) else t for t in target],
        }
    return table


def _gain(cfg) -> float:
    return float(cfg.callbacks.watch.target_gain)


def _fmt(row: dict) -> str:
    return f"{row['geneval']:.3f}+-{row['se']:.3f} ({row['se_from']} SE, n={row['n']})"


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    table = combination_table(variants, cfg)
    write_table(table, cfg)
    plot_curves(variants, cfg)
    out: dict[str, Claim] = {}
    objectives = ("epg", "ppo_clip")
    pairs = {o: (table.get((o, "elbo", "sde")), table.get((o, "per_step", "sde"))) for o in objectives}
    if all(e is not None and p is not None for e, p in pairs.values()):
        gains = {o: e["geneval"] - p["geneval"] for o, (e, p) in pairs.items()}
        detail = "; ".join(f"{o}: elbo {_fmt(e)} vs per_step {_fmt(p)}" for o, (e, p) in pairs.items())
        out["elbo_beats_per_step"] = Claim(
            all(d > 0 for d in gains.values()), gains, 0.0,
            f"strict GenEval on all held-out eval prompts at the NFE budget, SDE rollouts; {detail}")
        gaps = {lk: abs(table[("epg", lk, "sde")]["geneval"] - table[("ppo_clip", lk, "sde")]["geneval"])
                for lk in ("elbo", "per_step")}
        out["estimator_matters_more_than_loss"] = Claim(
            min(gains.values()) > max(gaps.values()),
            {"elbo_minus_per_step": gains, "abs_epg_minus_ppo_clip": gaps}, None,
            f"min over objectives of GenEval(elbo)-GenEval(per_step) must exceed max over estimators of "
            f"|GenEval(epg)-GenEval(ppo_clip)|; {detail}")
    else:
        missing = "both objectives x {elbo, per_step} with sde"
        out["elbo_beats_per_step"] = Claim.uncomputable(f"needs {missing}; ran {sorted(table)}", 0.0)
        out["estimator_matters_more_than_loss"] = Claim.uncomputable(f"needs {missing}; ran {sorted(table)}")
    if not table:
        out["no_reward_hacking"] = Claim.uncomputable("no finished variant", 1.5)
        out["improves_base"] = Claim.uncomputable("no finished variant", 0.1)
        return out
    best_design, best = max(table.items(), key=lambda kv: kv[1]["geneval"])
    name = "+".join(best_design)
    out["no_reward_hacking"] = Claim(
        best["fid_ratio"] <= 1.5, best["fid_ratio"], 1.5,
        f"best combination {name} (GenEval {_fmt(best)}): FID-style distance in the shapes feature net to "
        f"ground-truth renders of the 553 eval prompts, divided by the base model's on the same prompts and noise")
    gain = best["geneval"] - best["base"]
    out["improves_base"] = Claim(
        gain >= 0.1, gain, 0.1,
        f"best combination {name}: GenEval {_fmt(best)} minus the base model's {best['base']:.3f}+-"
        f"{best['base_se']:.3f} (binomial SE; same prompts and initial noise)")
    return out


def write_table(table: dict[tuple, dict], cfg) -> None:
    """study_table.csv in the study folder: one row per combination."""
    if not table or not cfg.output_dir:
        return
    path = Path(cfg.output_dir) / "study_table.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objective", "likelihood", "sampler", "geneval", "se", "se_from", "n_seeds", "base_geneval",
                    "fid_ratio", "nfe", f"nfe_to_base_plus_{_gain(cfg):g}"])
        for (o, lk, s), row in sorted(table.items()):
            reached = ["not reached" if t is None else f"{t:.0f}" for t in row["nfe_to_target"]]
            w.writerow([o, lk, s, f"{row['geneval']:.4f}", f"{row['se']:.4f}", row["se_from"], row["n"],
                        f"{row['base']:.4f}", f"{row['fid_ratio']:.3f}", f"{row['nfe']:.0f}", " / ".join(reached)])


def plot_curves(variants: dict[str, VariantResult], cfg) -> None:
    """study_geneval_vs_nfe.png: every run's watched GenEval and FID ratio against training NFE."""
    curves = {name: var.dir / "watch.csv" for name, var in variants.items() if (var.dir / "watch.csv").exists()}
    if not curves or not cfg.output_dir:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, path in sorted(curves.items()):
        rows = list(csv.DictReader(open(path)))
        nfe = [float(r["nfe"]) for r in rows]
        axes[0].plot(nfe, [float(r["geneval"]) for r in rows], marker=".", label=name)
        axes[1].plot(nfe, [float(r["fid_ratio"]) for r in rows], marker=".", label=name)
    axes[0].set(xlabel="training NFE", ylabel="strict GenEval (watched held-out prompts)")
    axes[1].set(xlabel="training NFE", ylabel="FID-style distance / base")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(cfg.output_dir) / "study_geneval_vs_nfe.png", dpi=110)
    plt.close(fig)
