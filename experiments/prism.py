"""Claims of ``prism_arith`` / ``prism_sudoku``: a small masked diffusion LM (modules.masked_lm) trained on a
checkable task (arithmetic with a scratchpad, or 4x4 Sudoku; answers + self-verification), then every
test-time search method compared at its measured NFE (verification passes counted) on held-out problems:
single sample, self-verified best-of-N, majority vote, oracle best-of-N (upper bound), Prism and its
ablations (callbacks.accuracy_vs_nfe writes the table and figure)."""

from __future__ import annotations

from suite.results import Claim, VariantResult


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    m = next(iter(variants.values())).metrics
    search = cfg.module.search
    nmax, pmax = max(search.bon_sizes), max(search.prism_n)
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
