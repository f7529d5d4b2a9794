"""Random-feature score model: closed-form gradient flow A(tau) against GD/SGD-trained A."""

import math

import torch

from core.diffusion.processes import OU
from core.diffusion.solvers import sample_process
from core.ridge.score_models import (
    EmpiricalScore,
    PosteriorMeanMLP,
    RandomFeatureScore,
    fourier_time_features,
    gradient_flow_solution,
    train_rf_sgd,
)


def _tiny_model(init_std=0.5):
    process = OU(T=5.0)
    model = RandomFeatureScore(dim=2, width=12, process=process, n_freq=3, seed=0, init_std=init_std)
    data = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]])
    return process, model, data


def test_closed_form_matches_full_batch_gradient_descent():
    _, model, data = _tiny_model()
    batch = model.training_batch(data, 400, torch.Generator().manual_seed(1))
    U, V = model.feature_moments(*batch, chunk=64)
    A0 = model.A.detach().clone()
    lr, steps = 0.01, 300
    train_rf_sgd(model, data, steps, lr, batch_size=0, fixed_batch=batch)
    expected = gradient_flow_solution(U, V, A0, tau=lr * steps)
    # Euler discretisation of the flow: error O(lr), small relative to the distance travelled
    assert (model.A.detach() - expected).norm() < 0.02 * (expected - A0).norm()
    assert (model.A.detach() - A0).norm() > 0.1


def test_closed_form_matches_sgd_on_fresh_minibatches():
    _, model, data = _tiny_model(init_std=0.0)
    big = model.training_batch(data, 200_000, torch.Generator().manual_seed(2))
    U, V = model.feature_moments(*big)
    lr, steps = 0.04, 750
    losses = train_rf_sgd(model, data, steps, lr, batch_size=256, generator=torch.Generator().manual_seed(3))
    expected = gradient_flow_solution(U, V, torch.zeros_like(V), tau=lr * steps)
    rel = (model.A.detach() - expected).norm() / expected.norm()
    assert rel < 0.1, rel
    assert losses[-1] < losses[0]


def test_flow_solves_the_ode_and_converges_to_least_squares():
    g = torch.Generator().manual_seed(4)
    M = torch.randn(6, 5, generator=g, dtype=torch.float64)
    U = M.T @ M / 6  # rank 5 of 5, well conditioned
    V, A0 = (
        torch.randn(2, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 5, generator=g, dtype=torch.float64),
    )
    tau, eps = 0.7, 1e-6
    dA = (gradient_flow_solution(U, V, A0, tau + eps) - gradient_flow_solution(U, V, A0, tau - eps)) / (
        2 * eps
    )
    torch.testing.assert_close(dA, -2 * (gradient_flow_solution(U, V, A0, tau) @ U - V), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gradient_flow_solution(U, V, A0, 0.0), A0)
    torch.testing.assert_close(gradient_flow_solution(U, V, A0, math.inf), V @ torch.linalg.inv(U))
    # a singular U: the component of A0 in its null space is never trained
    Us = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    A = gradient_flow_solution(
        Us,
        torch.tensor([[2.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.0, 3.0]], dtype=torch.float64),
        math.inf,
    )
    torch.testing.assert_close(A, torch.tensor([[2.0, 3.0]], dtype=torch.float64))


def test_loss_at_flow_optimum_is_minimal():
    _, model, data = _tiny_model(init_std=0.0)
    batch = model.training_batch(data, 2000, torch.Generator().manual_seed(5))
    U, V = model.feature_moments(*batch)
    losses = []
    for tau in (0.0, 1.0, 10.0, math.inf):
        model.set_gradient_flow(U, V, tau, A0=torch.zeros_like(V))
        losses.append(float(model.loss(*batch).detach()))
    assert losses == sorted(losses, reverse=True)


def test_empirical_score_plugs_into_sampler_and_hits_the_points():
    process = OU(T=8.0, t_min=1e-3)
    pts = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    res = sample_process(
        process,
        EmpiricalScore(pts, process),
        (200, 2),
        200,
        grid="geometric",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.cdist(res.x, pts).min(1).values.max() < 0.2


def test_shapes_and_time_features():
    process = OU(T=10.0)
    phi = fourier_time_features(torch.tensor([1e-3, 10.0], dtype=torch.float64), 4, 1e-3, 10.0)
    assert phi.shape == (2, 9)
    torch.testing.assert_close(phi[:, 1], torch.tensor([1.0, -1.0], dtype=torch.float64))  # cos(0), cos(pi)
    mlp = PosteriorMeanMLP(3, process, hidden=16, layers=2, n_freq=4)
    x, t = torch.randn(5, 3), torch.full((5,), 0.5)
    assert mlp(x, t).shape == (5, 3) and mlp.score(x, t).shape == (5, 3)
    rf = RandomFeatureScore(3, 10, process, n_freq=4)
    assert rf(x, t).shape == (5, 3) and rf.features(x, t).shape == (5, 10)
