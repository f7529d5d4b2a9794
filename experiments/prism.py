"""``prism_arith`` / ``prism_sudoku``: train a small masked diffusion LM on a checkable task (arithmetic
with a scratchpad, or 4x4 Sudoku; answers + self-verification), then compare test-time search methods at
their measured NFE (verification passes counted) on held-out problems: single sample, self-verified
best-of-N, majority vote, oracle best-of-N (upper bound), Prism and its ablations (no remasking, no
self-verification). Writes accuracy_vs_nfe.csv/.png."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch

from core.arith_task import ArithTask
from core.nfe import EvalCounter
from core.search import (
    PrismConfig,
    SelfVerifier,
    auroc,
    best_of_n,
    majority_vote,
    prism,
    sample_candidates,
    verification_by_step,
    within_problem_auroc,
)
from core.sudoku_task import SudokuTask
from modules.masked_lm import train_masked_lm
from suite.results import Claim, VariantResult

PRISM_VARIANTS = {"prism": {}, "prism_no_remask": {"remask": False}, "prism_no_sv": {"self_verify": False}}


TASKS = ("arith", "sudoku")


def make_task(task: str, op: str, a_digits: int, b_digits: int, n_blanks: int):
    if task == "arith":
        return ArithTask(op, a_digits, b_digits)
    if task == "sudoku":
        return SudokuTask(n_blanks)
    raise ValueError(f"job.task {task!r}: expected one of {TASKS}")


def run_job(
    output_dir: Path,
    seed: int,
    *,
    task: str = "arith",
    op: str = "mul",
    a_digits: int = 3,
    b_digits: int = 2,
    n_blanks: int = 10,
    d_model: int = 96,
    n_layers: int = 3,
    n_heads: int = 4,
    train_steps: int = 1500,
    batch_size: int = 128,
    lr: float = 1e-3,
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
    eval_problems: int = 2000,
    eval_batch: int = 250,
    temperature: float = 0.7,
    bon_sizes: list[int] = (1, 2, 4, 8, 16),
    prism_n: list[int] = (16,),
    min_width: int = 2,
    window: list[float] = (0.1, 0.6),
    shrink: float = 1.8,
    branches: int = 2,
    remask_tokens: int = 1,
    remask_pool: int = 3,
    by_step_problems: int = 500,
    log_every: int = 250,
    threads: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    output_dir = Path(output_dir)
    if threads > 0:
        torch.set_num_threads(threads)
    tk = make_task(task, op, a_digits, b_digits, n_blanks)
    model, metrics = train_masked_lm(
        tk,
        steps=train_steps,
        batch_size=batch_size,
        lr=lr,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        verify_weight=verify_weight,
        verify_frac=verify_frac,
        balanced=balanced,
        own_from=own_from,
        own_pool=own_pool,
        own_refresh=own_refresh,
        own_frac=own_frac,
        own_group=own_group,
        structure=structure,
        verify_steps=verify_steps,
        verify_lr=verify_lr,
        round2_gen=round2_gen,
        temperature=temperature,
        seed=seed,
        device=device,
        log_every=log_every,
    )
    steps, nmax = tk.n_steps, max(bon_sizes)
    MASK_ID = tk.mask_id
    g = torch.Generator().manual_seed(seed + 1)
    probs = tk.sample_problems(eval_problems, "test", g)
    verifier = SelfVerifier(model, tk.verify_inputs, MASK_ID, tk.yes_id, tk.no_id)
    correct: dict[str, list[torch.Tensor]] = {}
    nfe: dict[str, float] = {}
    sv_scores, sv_right = [], []
    base = PrismConfig(
        min_width=min_width,
        window=tuple(window),
        shrink=shrink,
        branches=branches,
        remask_tokens=remask_tokens,
        remask_pool=remask_pool,
        temperature=temperature,
    )
    t_eval = time.time()
    with torch.no_grad():
        for lo in range(0, eval_problems, eval_batch):
            pp = probs[lo : lo + eval_batch]
            P, prompts = len(pp), tk.prompts(pp)
            dec, ver = EvalCounter(), EvalCounter()
            cands = sample_candidates(
                model, prompts, nmax, steps, MASK_ID, temperature=temperature, generator=g, counter=dec
            )
            flat = cands.flatten(0, 1)
            scores = verifier(flat, ver).reshape(P, nmax)
            right = tk.check(flat, pp.repeat_interleave(nmax, 0)).reshape(P, nmax)
            keys = tk.answer_key(flat).reshape(P, nmax)
            sv_scores.append(scores)
            sv_right.append(right)
            per_dec, per_ver = dec.items / (P * nmax), ver.items / (P * nmax)  # measured passes per candidate
            for n in bon_sizes:  # the first n candidates are n independent samples
                c, s, k = cands[:, :n], scores[:, :n], keys[:, :n]
                name = "single" if n == 1 else f"bon_sv@{n}"
                correct.setdefault(name, []).append(tk.check(best_of_n(c, s), pp))
                nfe[name] = n * (per_dec + (per_ver if n > 1 else 0.0))
                if n > 1:
                    correct.setdefault(f"majority@{n}", []).append(tk.check(majority_vote(c, k), pp))
                    nfe[f"majority@{n}"] = n * per_dec
                    correct.setdefault(f"oracle@{n}", []).append(right[:, :n].any(1))
                    nfe[f"oracle@{n}"] = n * per_dec
            for n0 in prism_n:
                for vname, over in PRISM_VARIANTS.items():
                    if vname != "prism" and n0 != max(prism_n):
                        continue  # ablations at the largest width only
                    cfg = PrismConfig(**{**base.__dict__, "n_initial": n0, **over})
                    cnt = EvalCounter()
                    ans, _ = prism(
                        model, prompts, steps, MASK_ID, tk.answer_key, cfg, verifier, generator=g, counter=cnt
                    )
                    correct.setdefault(f"{vname}@{n0}", []).append(tk.check(ans, pp))
                    nfe[f"{vname}@{n0}"] = cnt.items / P
            print(f"[prism] evaluated {lo + P}/{eval_problems}", flush=True)
        sv_s, sv_r = torch.cat(sv_scores), torch.cat(sv_right)  # (P, nmax)
        au = auroc(sv_s, sv_r)
        if au == au:  # JSON has no NaN: absent (claim uncomputable) when every candidate is right or wrong
            metrics["test/sv_auroc"] = au
        metrics["test/sv_n"] = float(sv_s.numel())
        # diagnostics: ranking among one problem's candidates (what best-of-N needs), and the pooled
        # AUROC by difficulty = the fraction of the problem's nmax candidates that are right
        wp, n_mixed = within_problem_auroc(sv_s, sv_r)
        if wp == wp:  # JSON has no NaN: absent when no problem has both right and wrong candidates
            metrics["test/sv_auroc_within_problem"] = wp
        metrics["test/sv_n_mixed_problems"] = float(n_mixed)
        rate = sv_r.float().mean(1, keepdim=True).expand_as(sv_r)
        for lo_r, hi_r in ((0.0, 0.34), (0.34, 0.67), (0.67, 1.01)):
            sel = (rate >= lo_r) & (rate < hi_r)
            au = auroc(sv_s[sel], sv_r[sel])
            if au == au:  # both classes present
                metrics[f"test/sv_auroc_passrate_{lo_r:.2f}-{min(hi_r, 1):.2f}"] = au
        metrics["test/sv_mean_p_yes_right"] = float(sv_s[sv_r].mean()) if sv_r.any() else 0.0
        metrics["test/sv_mean_p_yes_wrong"] = float(sv_s[~sv_r].mean()) if (~sv_r).any() else 0.0
        nb = min(by_step_problems, eval_problems)
        if nb > 0:
            comps, st_scores = verification_by_step(
                model, tk.prompts(probs[:nb]), steps, MASK_ID, verifier, temperature=temperature, generator=g
            )
            for i in range(steps):
                ok = tk.check(comps[i], probs[:nb])
                au = auroc(st_scores[i], ok)
                if au == au:
                    metrics[f"test/sv_auroc_step{i + 1}of{steps}"] = au
                metrics[f"test/greedy_acc_step{i + 1}of{steps}"] = float(ok.float().mean())
    single = torch.cat(correct["single"]).float()
    rows = []
    for name, parts in correct.items():
        c = torch.cat(parts).float()
        acc, n = float(c.mean()), len(c)
        ci = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n)
        diff = c - single  # paired with the single sample on the same problems
        diff_ci = 1.96 * float(diff.std()) / math.sqrt(n) if n > 1 else float("nan")
        metrics.update(
            {
                f"test/{name}/acc": acc,
                f"test/{name}/ci95": ci,
                f"test/{name}/nfe": nfe[name],
                f"test/{name}/gain_vs_single": float(diff.mean()),
                f"test/{name}/gain_ci95": diff_ci,
            }
        )
        rows.append((name, nfe[name], acc, ci))
    metrics["test/n_problems"] = float(len(single))
    metrics["test/steps"] = float(steps)
    metrics["test/eval_seconds"] = time.time() - t_eval
    write_table(output_dir, rows)
    return metrics


def write_table(output_dir: Path, rows: list[tuple[str, float, float, float]]) -> None:
    """accuracy_vs_nfe.csv and .png (the paper's headline figure), and the table on stdout."""
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r[0].split("@")[0], r[1]))
    with open(output_dir / "accuracy_vs_nfe.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "nfe_per_problem", "accuracy", "ci95"])
        w.writerows([(m, f"{n:.1f}", f"{a:.4f}", f"{c:.4f}") for m, n, a, c in rows])
    print(f"{'method':<22}{'NFE':>8}{'acc':>8}{'+-95%':>8}")
    for m, n, a, c in rows:
        print(f"{m:<22}{n:>8.1f}{a:>8.3f}{c:>8.3f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the table is the result; the figure is a convenience
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    fams: dict[str, list] = {}
    for m, n, a, c in rows:
        fams.setdefault(m.split("@")[0], []).append((n, a, c))
    for fam, pts in fams.items():
        pts.sort()
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker="o",
            label=fam,
            capsize=2,
            linestyle="--" if fam == "oracle" else "-",
        )
    ax.set_xscale("log")
    ax.set_xlabel("NFE per problem (verification passes included)")
    ax.set_ylabel("accuracy (held-out problems)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output_dir / "accuracy_vs_nfe.png", dpi=120)
    plt.close(fig)


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    m = next(iter(variants.values())).metrics
    nmax, pmax = max(cfg.job.bon_sizes), max(cfg.job.prism_n)
    bon, pr = f"test/bon_sv@{nmax}", f"test/prism@{pmax}"
    single = m["test/single/acc"]
    n = int(m["test/n_problems"])
    out = {}
    if f"{bon}/acc" not in m or f"{pr}/acc" not in m:
        msg = "best-of-N or Prism did not run"
        return {
            k: Claim.uncomputable(msg)
            for k in ("prism_matches_bon_fewer_nfe", "scaling_helps", "self_verification_informative")
        }
    ba, bci, bn = m[f"{bon}/acc"], m[f"{bon}/ci95"], m[f"{bon}/nfe"]
    pa, pn = m[f"{pr}/acc"], m[f"{pr}/nfe"]
    if ba - bci <= 0:  # a model that (almost) never solves a problem says nothing about search
        out["prism_matches_bon_fewer_nfe"] = Claim.uncomputable(
            f"self-verified best-of-{nmax} solves {ba:.3f} +- {bci:.3f} of {n} problems (single sample {single:.3f}): "
            f"the model is too weak for the comparison (Prism {pa:.3f} at {pn:.0f} NFE vs {bn:.0f})",
            ba,
        )
    else:
        out["prism_matches_bon_fewer_nfe"] = Claim(
            pa >= ba - bci and pn <= 0.5 * bn,
            {"prism_acc": pa, "prism_nfe": pn},
            {"bon_acc": ba, "bon_nfe": bn},
            f"{n} held-out problems; Prism (N={pmax}) acc {pa:.3f} at {pn:.0f} NFE vs self-verified best-of-{nmax} "
            f"{ba:.3f} +- {bci:.3f} (95% binomial CI) at {bn:.0f} NFE, verification passes counted for both; holds "
            f"when Prism's acc >= the CI's lower end and its NFE <= half. Single sample: {single:.3f} (target 0.3-0.7)",
        )
    gains = {k: (m[f"{k}/gain_vs_single"], m[f"{k}/gain_ci95"]) for k in (bon, pr)}
    out["scaling_helps"] = Claim(
        all(g > ci for g, ci in gains.values()),
        {k.split("/")[-1]: g for k, (g, _) in gains.items()},
        0.0,
        f"accuracy gain over a single sample on the same {n} problems (paired); 95% CI "
        + ", ".join(f"{k.split('/')[-1]}: {g:+.3f} +- {ci:.3f}" for k, (g, ci) in gains.items())
        + "; holds when both gains exceed their CI",
    )
    steps = int(m["test/steps"])
    by_step = [m.get(f"test/sv_auroc_step{i + 1}of{steps}") for i in range(steps)]
    au = m.get("test/sv_auroc")
    if au is None:
        out["self_verification_informative"] = Claim.uncomputable(
            "every best-of-N candidate was right, or every one wrong: no AUROC")
        return out
    wp = m.get("test/sv_auroc_within_problem")
    out["self_verification_informative"] = Claim(
        au is not None and au >= 0.75,
        au,
        0.75,
        f"AUROC of p(yes) at the verdict [MASK] slot for right vs wrong final completions "
        f"({int(m['test/sv_n'])} best-of-{nmax} candidates); by denoising step (greedy completions of one "
        f"trajectory): " + ", ".join("-" if v is None else f"{v:.2f}" for v in by_step)
        + f"; among one problem's own candidates (mean over {int(m.get('test/sv_n_mixed_problems', 0))} problems "
        f"with both right and wrong ones): " + ("-" if wp is None else f"{wp:.2f}"),
    )
    return out
