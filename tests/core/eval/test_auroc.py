"""The one AUROC (rank-based, ties averaged) against a brute-force count over (positive, negative) pairs."""

import itertools
import math

import numpy as np
import torch

from core.eval.auroc import auroc, within_group_auroc


def pairwise(scores: list[float], labels: list[int]) -> float:
    """P(s+ > s-) + P(s+ = s-) / 2 counted over every (positive, negative) pair."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_every_tiny_case_matches_the_pairwise_count():
    """All labelings of up to 5 items over score sets with and without ties."""
    score_sets = [[0.1, 0.4, 0.35, 0.8, 0.2], [0.5, 0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 2.0, 3.0, 1.0], [3, 1, 2, 2, 0]]
    n_checked = 0
    for scores in score_sets:
        for m in range(2, 6):
            for labels in itertools.product([0, 1], repeat=m):
                if 0 < sum(labels) < m:
                    s, y = scores[:m], list(labels)
                    assert auroc(torch.tensor(s, dtype=torch.float64), torch.tensor(y)) == pairwise(s, y), (s, y)
                    n_checked += 1
    assert n_checked == 4 * (2 + 6 + 14 + 30)


def test_known_values_ties_and_inputs():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5  # a tie counts 1/2
    assert auroc(np.array([3.0, 1.0]), np.array([True, False])) == 1.0  # numpy in, boolean labels
    assert auroc(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[0, 0], [1, 1]])) == 1.0  # flattened
    assert math.isnan(auroc(torch.tensor([0.5]), torch.tensor([1])))  # one class: undefined
    assert auroc(-torch.arange(6.0), torch.tensor([1, 1, 1, 0, 0, 0])) == 1.0


def test_many_ties_match_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (300,), generator=g).float()
    y = torch.rand(300, generator=g) < 0.3
    assert abs(auroc(s, y) - pairwise(s.tolist(), y.tolist())) < 1e-12


def test_within_group_auroc_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.8], [0.3, 0.3, 0.3]])
    labels = torch.tensor([[True, False, False], [True, False, True], [False, False, False]])
    # row 0: the positive above both negatives -> 1; row 1: positive 0.2 < 0.8 negative (0),
    # positive 0.8 = 0.8 negative (1/2) -> 0.25; row 2 has no positive and does not count
    au, n = within_group_auroc(scores, labels)
    assert n == 2 and au == (1.0 + 0.25) / 2
    assert math.isnan(within_group_auroc(scores, torch.zeros(3, 3, dtype=torch.bool))[0])
