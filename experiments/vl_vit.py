"""Claims of ``vl_vit``: IVON's posterior predictive is better calibrated than AdamW's predictions
(METHODS.md section 6; the ViT experiments of the paper, here on 4000 offline MNIST digits).

Compared on the held-out test split: IVON's posterior-predictive NLL and ECE (``test/pp_nll``,
``test/pp_ece``; ``eval_samples`` posterior samples) against AdamW's (a point estimate: pp = mean).
The ECE difference's uncertainty is a paired bootstrap over test examples (the same resampled indices
for both models, 200 resamples) from the ``test_predictions.pt`` each variant writes.
"""

from __future__ import annotations

import torch

from suite.results import Claim, VariantResult


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """L1 ECE with equal-width confidence bins (as torchmetrics); probs (N, K), labels (N,)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.float().mean() * (conf[mask].mean() - correct[mask].mean()).abs()
    return ece


def bootstrap_ece_difference(probs_a, probs_b, labels, n_boot: int = 200, seed: int = 0) -> tuple[float, float]:
    """ECE(a) - ECE(b) on the test set and its paired-bootstrap standard error."""
    gen = torch.Generator().manual_seed(seed)
    diff = float(expected_calibration_error(probs_a, labels) - expected_calibration_error(probs_b, labels))
    boots = []
    for _ in range(n_boot):
        idx = torch.randint(0, len(labels), (len(labels),), generator=gen)
        boots.append(float(expected_calibration_error(probs_a[idx], labels[idx])
                           - expected_calibration_error(probs_b[idx], labels[idx])))
    return diff, float(torch.tensor(boots).std())


def _by_optimizer(variants: dict[str, VariantResult], name: str) -> list[VariantResult]:
    return [v for k, v in variants.items() if k.split("__")[0] == name and "@" not in k]


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    ivon, adamw = _by_optimizer(variants, "ivon"), _by_optimizer(variants, "adamw")
    if not ivon or not adamw:
        return {"ivon_better_calibrated": Claim.uncomputable("needs an 'ivon' and an 'adamw' variant")}
    nll_i = sum(v.metrics["test/pp_nll"] for v in ivon) / len(ivon)
    nll_a = sum(v.metrics["test/pp_nll"] for v in adamw) / len(adamw)
    acc_i = sum(v.metrics["test/pp_accuracy"] for v in ivon) / len(ivon)
    acc_a = sum(v.metrics["test/pp_accuracy"] for v in adamw) / len(adamw)
    diffs, ses = [], []
    for vi, va in zip(ivon, adamw):  # paired by seed order
        pi, pa = (vi.dir / "test_predictions.pt"), (va.dir / "test_predictions.pt")
        if not pi.exists() or not pa.exists():
            return {"ivon_better_calibrated": Claim.uncomputable(f"missing {pi} or {pa}")}
        a, b = torch.load(pi), torch.load(pa)
        if not torch.equal(a["labels"], b["labels"]):
            return {"ivon_better_calibrated": Claim.uncomputable("the variants were tested on different examples")}
        d, se = bootstrap_ece_difference(a["probs"], b["probs"], a["labels"])
        diffs.append(d)
        ses.append(se)
    ece_diff = sum(diffs) / len(diffs)
    ece_se = (sum(s**2 for s in ses) ** 0.5) / len(ses)
    holds = nll_i < nll_a and ece_diff < 0 and -ece_diff > 2 * ece_se
    return {"ivon_better_calibrated": Claim(
        holds,
        {"pp_nll_ivon": round(nll_i, 4), "nll_adamw": round(nll_a, 4), "ece_ivon_minus_adamw": round(ece_diff, 4),
         "ece_diff_se": round(ece_se, 4), "acc_ivon": round(acc_i, 4), "acc_adamw": round(acc_a, 4)},
        {"nll": "ivon < adamw", "ece": "ivon < adamw by > 2 se"},
        f"test split ({len(a['labels'])} digits), IVON posterior predictive ({cfg.module.eval_samples} samples) vs "
        f"AdamW point predictions, {len(ivon)} seed(s); ECE 15 bins L1, se = paired bootstrap over test examples "
        "(200 resamples); accuracies reported so the comparison is at similar accuracy")}
