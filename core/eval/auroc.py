"""The suite's one AUROC: the Mann-Whitney statistic from average ranks.

For scores s with n_+ positives and n_- negatives, AUROC = P(s_+ > s_-) + P(s_+ = s_-) / 2 over all
(positive, negative) pairs = U / (n_+ n_-), where U = (sum of the positives' ranks) - n_+ (n_+ + 1) / 2
and tied scores share their average rank (so a tied pair counts 1/2). Ranks are half-integers, so
U is exact in float64 and the only rounding is the final division. O(n log n): no pair matrix.
Undefined (NaN) when one class is absent.
"""

from __future__ import annotations

import numpy as np
import torch


def auroc(scores, labels) -> float:
    """AUROC of ``scores`` (higher = positive) for boolean / {0, 1} ``labels`` (tensors or arrays, any
    shape, flattened); NaN when all labels are equal."""
    s = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores).double().flatten()
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).bool().flatten()
    if len(s) != len(y):
        raise ValueError(f"auroc: {len(s)} scores but {len(y)} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = torch.unique(s, return_inverse=True, return_counts=True)
    upto = counts.cumsum(0).double()
    avg_rank = upto - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = avg_rank[inv][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def within_group_auroc(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Mean AUROC within each row's own items: scores, labels (P, N); only rows with both classes count.
    Returns (mean AUROC or NaN, number of such rows). (Best-of-N needs this ranking among one
    problem's candidates, not the pooled AUROC, which also rewards telling easy problems from hard.)"""
    y = labels.bool()
    per = [auroc(s, t) for s, t in zip(scores, y) if bool(t.any()) and not bool(t.all())]
    if not per:
        return float("nan"), 0
    return float(torch.tensor(per, dtype=torch.float64).mean()), len(per)
