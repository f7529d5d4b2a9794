import math

import pytest
import torch

from core.diffusion.discrete_ddpm import LinearBetaDDPM, normal_kl, strided_ancestral_sample, vlb_term
from core.utils.nfe import EvalCounter


def test_alpha_bar_is_the_product_of_one_minus_beta():
    s = LinearBetaDDPM(1000)
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    assert float(s.alphas_bar[9]) == pytest.approx(math.prod(1 - float(b) for b in s.betas[:10]))
    assert float(s.alphas_bar[-1]) < 1e-4  # x_{N-1} is (almost) pure noise


def test_strided_steps_cover_both_ends():
    s = LinearBetaDDPM(1000)
    steps = s.strided_steps(50)
    assert int(steps[0]) == 999 and int(steps[-1]) == 0 and len(steps) == 50
    assert bool((steps[1:] < steps[:-1]).all())


def test_respaced_posterior_is_gaussian_conditioning():
    """q(x_m | x_n, x0) by conditioning the joint Gaussian of (x_m, x_n) given x0 (m < n)."""
    s = LinearBetaDDPM(1000)
    steps = torch.tensor([700, 300, 0])
    coefs = s.respaced(steps)
    coef = {k: v[0] for k, v in coefs.items()}  # step 700 -> 300
    a_m, a_n = float(s.alphas_bar[300]), float(s.alphas_bar[700])
    # x_n = sqrt(a_n/a_m) x_m + noise, so Cov(x_m, x_n | x0) = sqrt(a_n/a_m)(1 - a_m)
    x0, xn = torch.tensor([0.7]), torch.tensor([-0.4])
    c = math.sqrt(a_n / a_m) * (1 - a_m)
    mean = math.sqrt(a_m) * x0 + c / (1 - a_n) * (xn - math.sqrt(a_n) * x0)
    var = (1 - a_m) - c**2 / (1 - a_n)
    got_mean, got_var = s.posterior(x0, xn, coef)
    torch.testing.assert_close(got_mean.double(), mean.double(), rtol=1e-6, atol=1e-7)
    assert float(got_var) == pytest.approx(var, rel=1e-6)


def test_normal_kl_matches_torch():
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.5])
    lv1, lv2 = torch.tensor([0.1, -0.5]), torch.tensor([-0.2, 0.4])
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (lv1 / 2).exp()), torch.distributions.Normal(m2, (lv2 / 2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)


def _gaussian_eps_oracle(s, m, sd):
    """E[eps | x_n] for data N(m, sd^2): sqrt(1-a) (x - sqrt(a) m) / (a sd^2 + 1 - a)."""

    def net(x, n):
        a = s.alphas_bar[n].float()[:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * sd**2 + 1 - a), None

    return net


@pytest.mark.parametrize("steps", [1000, 100])
def test_strided_sampler_with_exact_eps_recovers_gaussian(steps):
    s = LinearBetaDDPM(1000)
    counter = EvalCounter()
    x = strided_ancestral_sample(
        _gaussian_eps_oracle(s, 2.0, 0.5),
        s,
        (20000, 1),
        steps,
        torch.Generator().manual_seed(0),
        counter=counter,
    )
    assert counter.calls == steps and counter.items == 20000 * steps
    assert float(x.mean()) == pytest.approx(2.0, abs=0.02)
    assert float(x.std()) == pytest.approx(0.5, rel=0.06)


def test_vlb_is_zero_kl_for_exact_eps_and_small_variance():
    s = LinearBetaDDPM(1000)
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    n = torch.tensor([5, 200, 600, 999])
    xn = s.q_sample(x0, n, eps)
    # v = -1 picks the posterior variance beta~, and the true eps gives the true mean: KL = 0
    term = vlb_term(s, x0, xn, n, eps, -torch.ones_like(x0))
    torch.testing.assert_close(term, torch.zeros(4), atol=1e-5, rtol=0)
    assert bool((vlb_term(s, x0, xn, n, eps + 0.1, -torch.ones_like(x0)) > 1e-6).all())
