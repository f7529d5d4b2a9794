"""ReLUDAE and ReLUDiffusion: exact forward formulas, loss, sampler, steering and detection pieces."""

import pytest
import torch

from core.diffusion.steering import Steering, concept_direction
from modules.relu_dae import ReLUDAE
from modules.relu_diffusion import ReLUDiffusion


def test_dae_forward_is_tied_two_layer_relu():
    dae = ReLUDAE(dim=6, width=4)
    dae.data_mean.copy_(torch.arange(6.0) / 10)
    x = torch.randn(3, 6)
    W, mu = dae.weight.detach(), dae.data_mean
    expect = mu + torch.relu((x - mu) @ W.T) @ W
    assert torch.allclose(dae(x), expect, atol=1e-6)
    # loss with a given noise is exactly |f(x + sigma eps) - x|^2 / d
    eps = torch.randn(3, 6)
    loss = dae.denoising_loss(x, eps)
    assert torch.allclose(loss, (dae(x + 0.2 * eps) - x).pow(2).mean(1))


def test_dae_that_stores_its_training_points_reconstructs_them_and_has_row_cosine_one():
    # zero-mean training points +-2 e1, +-2 e2; rows = their directions: a stored-sample DAE
    e = torch.eye(4)
    x = torch.stack([2 * e[0], -2 * e[0], 2 * e[1], -2 * e[1]])
    dae = ReLUDAE(dim=4, width=4, center=False)
    with torch.no_grad():
        dae.weight.copy_(torch.stack([e[0], -e[0], e[1], -e[1]]))
    assert torch.allclose(dae(x), x)  # noise-free training points are reconstructed exactly
    rep = dae.representation_report(x, x)
    assert rep["row_cosine"] == pytest.approx(1.0, abs=1e-6)
    # a noisy +-2 e1 fires its own row and exactly one of +-e2 (whichever its noise favours): 2 of 4
    assert rep["active_frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="optimizer"):
        ReLUDAE(optimizer="lbfgs")


def test_diffusion_forward_matches_formula_and_sigma_is_log_uniform():
    torch.manual_seed(0)
    m = ReLUDiffusion(dim=5, width=3, gain_hidden=4)
    m.data_mean.copy_(torch.ones(5) * 0.1)
    x, sigma = torch.randn(2, 5), torch.tensor([0.05, 1.5])
    out = m.gain(torch.log(sigma)[:, None])
    h = torch.relu((x - m.data_mean) @ m.weight.T) * torch.exp(out[:, :3])
    expect = m.data_mean + h @ m.weight + torch.sigmoid(out[:, 3:]) * (x - m.data_mean)
    assert torch.allclose(m(x, sigma), expect, atol=1e-6)
    s = m.process.sigma(torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    assert s.min() >= 0.02 - 1e-6 and s.max() <= 2.0 + 1e-6
    # log-uniform: the median of log sigma is the midpoint log(0.2)
    assert torch.log(s).median().item() == pytest.approx(torch.log(torch.tensor(0.2)).item(), abs=0.05)


def test_sampler_uses_a_geometric_sigma_grid_and_counts_evaluations():
    m = ReLUDiffusion(dim=4, width=3, sample_steps=10)
    seen = []
    orig = m.forward

    def spy(x, sigma, steering=None):
        seen.append(float(sigma[0]))
        return orig(x, sigma, steering)

    m.forward = spy
    res = m.sample(7, generator=torch.Generator().manual_seed(0))
    assert res.x.shape == (7, 4) and res.nfe == 11 and m.nfe.calls == 11
    ratios = torch.tensor(seen[1:10]) / torch.tensor(seen[:9])
    assert torch.allclose(ratios, torch.full((9,), (0.02 / 2.0) ** 0.1), rtol=1e-4)
    assert seen[0] == pytest.approx(2.0) and seen[-1] == pytest.approx(0.02)


def test_sampler_recovers_a_point_mass_with_the_exact_denoiser():
    # a model whose x0_hat is the exact posterior mean of a single training point c returns c
    m = ReLUDiffusion(dim=3, width=2, sample_steps=20)
    c = torch.tensor([0.5, -1.0, 0.25])
    m.forward = lambda x, sigma, steering=None: c.expand_as(x)
    assert torch.allclose(m.sample(4).x, c.expand(4, 3))


def test_steering_adds_alpha_v_only_in_later_steps_and_alpha_zero_is_identity():
    m = ReLUDiffusion(dim=4, width=3)
    x, sigma = torch.randn(5, 4), torch.full((5,), 0.1)
    v = torch.tensor([1.0, 0.0, 2.0])
    gains = m._gains(sigma)[0]
    base = m.hidden(x, sigma)
    steered = m.hidden(x, sigma, Steering(v, alpha=0.5, sigma_start=0.5))
    assert torch.allclose(steered - base, 0.5 * v * gains, atol=1e-6)
    assert torch.equal(m.hidden(x, sigma, Steering(v, alpha=0.5, sigma_start=0.05)), base)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(
        m.sample(3, generator=gen(), steering=Steering(v, 0.0)).x, m.sample(3, generator=gen()).x
    )
    hidden = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    assert concept_direction(hidden, torch.tensor([7, 7, 1]), 7).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="no example"):
        concept_direction(hidden, torch.tensor([7, 7, 1]), 3)


def test_compute_loss_is_reproducible_with_a_generator():
    m = ReLUDiffusion(dim=4, width=3)
    batch = {"x": torch.randn(6, 4), "index": torch.arange(6)}
    a = m.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    b = m.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert a.item() == b.item() and a.item() > 0
    assert m.compute_loss(batch).item() > 0  # keyed per-example noise path
    with pytest.raises(ValueError, match="flat inputs"):
        m(torch.zeros(2, 5), torch.ones(2))


def test_steering_sweep_reports_class_rate_and_distance_per_alpha():
    from core.diffusion.steering import steering_sweep

    def sample(steering):  # alpha a: a fraction min(a, 1) of 10 samples lands in class 1
        k = int(round(10 * min(steering.alpha, 1.0)))
        return torch.cat([torch.ones(k, 2), -torch.ones(10 - k, 2)])

    def classifier(x):
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)  # class 1 when the first coordinate is positive

    res, grids = steering_sweep(
        sample, torch.ones(3), [0.0, 0.3, 2.0], 0.5, 1, classifier,
        features=lambda x: x, frechet=lambda a, b: float((a.mean(0) - b.mean(0)).norm()),
        reference_features=torch.zeros(4, 2),
    )
    assert [res[a]["class_rate"] for a in (0.0, 0.3, 2.0)] == pytest.approx([0.0, 0.3, 1.0])
    assert res[0.0]["fd"] == pytest.approx(2**0.5) and res[2.0]["fd"] == pytest.approx(2**0.5)
    assert res[0.3]["fd"] == pytest.approx(0.4 * 2**0.5)
    assert grids[2.0].shape == (10, 2)
