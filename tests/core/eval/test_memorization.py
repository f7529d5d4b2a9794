"""Memorization and representation measures against exact answers on hand-built cases."""

import math
import subprocess
import sys

import pytest
import torch

from core.eval.memorization import (
    activation_cv,
    activation_l4_l2,
    activation_spread,
    activation_std,
    active_row_cosine,
    active_rows,
    detection_auroc,
    memorization_rate,
    nearest_neighbor_ratio,
    nearest_two,
    row_max_cosine,
    tpr_at_fpr,
)


def test_uniform_activation_has_minimum_spread_and_one_hot_the_maximum():
    H = 16
    uniform = torch.full((1, H), 0.7)
    one_hot = torch.zeros(1, H)
    one_hot[0, 3] = 5.0
    rand = torch.rand(200, H) + 0.01
    assert activation_std(uniform).item() == pytest.approx(0.0, abs=1e-7)
    assert activation_l4_l2(uniform).item() == pytest.approx(H**-0.25, rel=1e-6)
    assert activation_l4_l2(one_hot).item() == pytest.approx(1.0, rel=1e-6)
    spread = activation_l4_l2(rand)
    assert bool((spread > H**-0.25).all()) and bool((spread < 1.0).all())
    # std across units of a two-valued vector (k units at a, rest 0): exact a*sqrt(p(1-p))
    two = torch.zeros(1, 10)
    two[0, :4] = 2.0
    assert activation_std(two).item() == pytest.approx(2.0 * math.sqrt(0.4 * 0.6), rel=1e-6)
    assert activation_l4_l2(torch.zeros(2, 5)).tolist() == [0.0, 0.0]
    # coefficient of variation: 0 uniform, sqrt(H - 1) one-hot, sqrt(H/k - 1) for k equal active units
    assert activation_cv(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert activation_cv(one_hot).item() == pytest.approx(math.sqrt(H - 1), rel=1e-5)
    assert activation_cv(two).item() == pytest.approx(math.sqrt(10 / 4 - 1), rel=1e-5)
    assert bool((activation_cv(rand) < math.sqrt(H - 1)).all())
    s = activation_spread(torch.cat([uniform, one_hot]))
    assert s["active_frac"] == pytest.approx((H + 1) / (2 * H))


def test_rows_made_of_training_images_have_cosine_one():
    g = torch.Generator().manual_seed(0)
    background = -torch.ones(1, 64)
    x_train = background + 2 * (torch.rand(10, 64, generator=g) > 0.7).float()  # MNIST-like: shared -1 bg
    centred = x_train - x_train.mean(0)
    weight = torch.cat([3.0 * centred[:4], 0.5 * centred[7:8]])
    cos = row_max_cosine(weight, x_train)
    assert torch.allclose(cos, torch.ones(5), atol=1e-5)
    assert torch.allclose(row_max_cosine(weight, centred), cos)  # centring is idempotent
    assert active_row_cosine(weight, centred) == pytest.approx(1.0, abs=1e-5)
    # a row mixing two images is not a stored sample: its cosine is exactly known when the two
    # centred images are orthogonal with equal norms: 1/sqrt(2)
    a, b = torch.zeros(4), torch.zeros(4)
    a[0], b[1] = 1.0, 1.0
    pts = torch.stack([a, b, -a, -b])  # mean zero, so centring leaves them as they are
    assert row_max_cosine((a + b)[None], pts).item() == pytest.approx(2**-0.5, rel=1e-6)
    # random rows are far from every (centred) image; raw background dominates only without centring
    rand_rows = torch.randn(50, 64, generator=g)
    assert float(row_max_cosine(rand_rows, x_train).mean()) < 0.6


def test_active_rows_are_those_that_fire_on_training_data():
    x_train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -5.0]])
    assert active_rows(weight, x_train).tolist() == [True, False, True]
    assert active_rows(weight, x_train, min_fire_frac=0.5).tolist() == [True, False, False]


def test_nearest_two_matches_brute_force_across_chunk_boundaries():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(37, 9, generator=g)
    q = torch.randn(23, 9, generator=g)
    dist, idx = nearest_two(q, ref, query_chunk=5, ref_chunk=6)
    full = torch.cdist(q.double(), ref.double())
    bd, bi = full.topk(2, dim=1, largest=False)
    assert torch.equal(idx, bi)
    assert torch.allclose(dist, bd, atol=1e-10)


def test_copy_of_a_training_point_has_ratio_zero_and_is_memorized():
    g = torch.Generator().manual_seed(2)
    ref = 10 * torch.randn(50, 30, generator=g)
    copies = ref[[3, 17]]
    far = torch.randn(2, 30, generator=g) * 0.01  # near the origin: equidistant-ish, ratio near 1
    ratio, nn1 = nearest_neighbor_ratio(torch.cat([copies, far]), ref)
    assert ratio[:2].tolist() == [0.0, 0.0]
    assert nn1[:2].tolist() == [3, 17]
    assert bool((ratio[2:] > 1 / 3).all())
    assert memorization_rate(ratio) == 0.5
    # exactly known ratio: midpoint-ish query on a line
    ref_line = torch.tensor([[0.0], [4.0], [100.0]])
    r, _ = nearest_neighbor_ratio(torch.tensor([[1.0]]), ref_line)
    assert r.item() == pytest.approx(1 / 3)
    # a duplicated training point: both distances 0 -> ratio 0, not NaN
    r, _ = nearest_neighbor_ratio(torch.tensor([[4.0]]), torch.tensor([[4.0], [4.0], [9.0]]))
    assert r.item() == 0.0


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="features"):
        nearest_two(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        nearest_two(torch.zeros(3, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="shape"):
        activation_l4_l2(torch.zeros(3))


def test_auroc_and_tpr_at_fpr_against_pairwise_counts():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(60, generator=g)
    labels = torch.rand(60, generator=g) < 0.4
    labels[0], labels[1] = True, False
    pos, neg = scores[labels], scores[~labels]
    pairwise = (pos[:, None] > neg[None, :]).float().mean().item()  # no ties with continuous scores
    assert detection_auroc(scores, labels) == pytest.approx(pairwise, abs=1e-6)
    perfect = torch.tensor([0.1, 0.2, 0.9, 0.8])
    lab = torch.tensor([False, False, True, True])
    assert detection_auroc(perfect, lab) == pytest.approx(1.0)
    assert tpr_at_fpr(perfect, lab) == pytest.approx(1.0)
    # one negative above every positive: at FPR 0 only positives above it count -> TPR 0
    s = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.0])
    lab = torch.tensor([False, True, True, False, False])
    assert tpr_at_fpr(s, lab, max_fpr=0.0) == 0.0
    assert tpr_at_fpr(s, lab, max_fpr=1 / 3) == pytest.approx(1.0)
    assert detection_auroc(s, torch.ones(5, dtype=torch.bool)) is None


@pytest.mark.slow
def test_nn_search_60k_by_10k_stays_under_2gb():
    code = (
        "import resource, torch\n"
        "from core.eval.memorization import nearest_two\n"
        "torch.manual_seed(0)\n"
        "ref = torch.rand(60000, 784); q = torch.rand(10000, 784)\n"
        "dist, idx = nearest_two(q, ref)\n"
        "assert dist.shape == (10000, 2)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "2", "PATH": ""},
        cwd=str(__import__("pathlib").Path(__file__).parents[3]),
    )
    peak_kb = int(out.stdout.strip().splitlines()[-1])
    assert peak_kb < 2 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
