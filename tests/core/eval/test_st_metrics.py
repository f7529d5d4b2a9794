import numpy as np
import pytest
import torch

from core.eval.spatial import (
    energy_distance,
    mae,
    mse,
    pcc_top_k,
    pearson_per_gene,
    point_prediction_metrics,
    relative_variation_distance,
)


def _pair(n=40, g=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    true = torch.randn(n, g, generator=gen)
    pred = true * torch.linspace(0, 1, g) + torch.randn(n, g, generator=gen)
    return pred, true


def test_pearson_matches_numpy_corrcoef():
    pred, true = _pair()
    r = pearson_per_gene(pred, true)
    expected = [np.corrcoef(pred[:, g].numpy(), true[:, g].numpy())[0, 1] for g in range(true.shape[1])]
    np.testing.assert_allclose(r.numpy(), expected, atol=1e-10)


def test_constant_prediction_counts_as_zero_correlation():
    pred, true = _pair()
    pred[:, 3] = 2.5
    assert pearson_per_gene(pred, true)[3] == 0.0


def test_pcc_top_k_is_mean_of_k_largest_and_caps_k():
    pred, true = _pair()
    r = sorted(pearson_per_gene(pred, true).tolist(), reverse=True)
    assert pcc_top_k(pred, true, 5) == pytest.approx(sum(r[:5]) / 5)
    assert pcc_top_k(pred, true, 200) == pytest.approx(sum(r) / len(r))
    assert pcc_top_k(true, true, 3) == pytest.approx(1.0)


def test_mse_mae_exact_values():
    true = torch.zeros(2, 2)
    pred = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    assert mse(pred, true) == pytest.approx(6 / 4)
    assert mae(pred, true) == pytest.approx(4 / 4)
    with pytest.raises(ValueError, match="one shape"):
        mse(pred, torch.zeros(3, 2))


def test_rvd_closed_form_for_scaled_predictions():
    _, true = _pair()
    # var(c y) = c^2 var(y) for every gene, so RVD = (c^2 - 1)^2 exactly
    assert relative_variation_distance(0.5 * true, true) == pytest.approx((0.25 - 1) ** 2)
    assert relative_variation_distance(true + 3.0, true) == pytest.approx(0.0, abs=1e-12)
    # regression to the mean (a constant) has RVD exactly 1
    assert relative_variation_distance(torch.zeros_like(true) + true.mean(0), true) == pytest.approx(1.0)


def test_point_prediction_metrics_keys():
    pred, true = _pair()
    m = point_prediction_metrics(pred, true)
    assert set(m) == {"pcc_10", "pcc_50", "pcc_200", "mse", "mae"}


def _energy_brute_force(x, y):
    s, t = len(x), len(y)
    cross = sum(float((a - b).norm()) for a in x for b in y) / (s * t)
    within_x = sum(float((x[i] - x[j]).norm()) for i in range(s) for j in range(s) if i != j) / (s * (s - 1))
    within_y = sum(float((y[i] - y[j]).norm()) for i in range(t) for j in range(t) if i != j) / (t * (t - 1))
    return 2 * cross - within_x - within_y


def test_energy_distance_matches_double_loop_per_spot():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(7, 3, 4, generator=gen, dtype=torch.float64) + 1.0
    d = energy_distance(x, y)
    for spot in range(3):
        assert float(d[spot]) == pytest.approx(_energy_brute_force(x[:, spot], y[:, spot]), rel=1e-9)


def test_energy_distance_of_two_point_masses_is_twice_their_distance():
    a = torch.tensor([0.0, 3.0]).expand(4, 1, 2)
    b = torch.tensor([4.0, 0.0]).expand(3, 1, 2)
    assert float(energy_distance(a, b)[0]) == pytest.approx(2 * 5.0)


def test_energy_distance_separates_same_from_shifted_law():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(400, 1, 3, generator=gen), torch.randn(400, 1, 3, generator=gen)
    same = float(energy_distance(x, y)[0])
    shifted = float(energy_distance(x + 1.0, y)[0])
    assert abs(same) < 0.05 and shifted > 0.5
