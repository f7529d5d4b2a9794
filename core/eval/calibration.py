"""Calibration of a classifier's predictive probabilities, and paired-bootstrap differences of such
metrics between two models scored on the same examples (docs/methods/eos_variational.md).

ECE (L1, B equal-width confidence bins, as torchmetrics): with confidence c_i = max_k p_ik and
correctness a_i, ECE = sum_b (n_b / N) |mean_b c - mean_b a| = sum_b |sum_b (c - a)| / N.
"""

from __future__ import annotations

import torch


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """L1 ECE with equal-width confidence bins; probs (N, K), labels (N,). One scatter-add per
    statistic (the bootstrap calls this thousands of times)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)
    gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, conf.double() - correct)
    return gap.abs().sum() / len(labels)


def nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labels; probs (N, K), labels (N,)."""
    return -torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).double().mean()


def bootstrap_difference(metric, probs_a, probs_b, labels, n_boot: int = 1000,
                         seed: int = 0) -> tuple[float, float]:
    """metric(a) - metric(b) on the test set and its paired-bootstrap standard error (the same resampled
    example indices for both models)."""
    gen = torch.Generator().manual_seed(seed)
    diff = float(metric(probs_a, labels) - metric(probs_b, labels))
    boots = []
    for _ in range(n_boot):
        idx = torch.randint(0, len(labels), (len(labels),), generator=gen)
        boots.append(float(metric(probs_a[idx], labels[idx]) - metric(probs_b[idx], labels[idx])))
    return diff, float(torch.tensor(boots).std())


def bootstrap_ece_difference(probs_a, probs_b, labels, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """ECE(a) - ECE(b) on the test set and its paired-bootstrap standard error."""
    return bootstrap_difference(expected_calibration_error, probs_a, probs_b, labels, n_boot, seed)
