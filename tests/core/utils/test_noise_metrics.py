import math

import torch

from core.eval.frechet import frechet_distance
from core.eval.distances import mmd_rbf, sliced_w2
from core.utils.noise import example_normal, example_uniform
from core.diffusion.parametrization import TARGETS, target_of, to_eps, to_score, to_x0
from core.diffusion.processes import VE, VP, LinearPath


def test_noise_independent_of_partition():
    index = torch.arange(64)
    full = example_normal(index, (3,), seed=7, step=11)
    shards = torch.cat([example_normal(index[r::2], (3,), 7, 11) for r in range(2)])
    order = torch.cat([index[0::2], index[1::2]])
    torch.testing.assert_close(shards, full[order])
    assert not torch.equal(full, example_normal(index, (3,), 7, 12))
    assert not torch.equal(full, example_normal(index, (3,), 8, 11))


def test_noise_moments():
    z = example_normal(torch.arange(50_000), (4,), 0, 0)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float(torch.corrcoef(z.T)[0, 1])) < 0.02
    u = example_uniform(torch.arange(50_000), (), 0, 0)
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_parametrizations_roundtrip():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    t = torch.rand(5, generator=gen) * 0.8 + 0.1
    for process in (VP(), VE(), LinearPath()):
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        xt = a * x0 + s * eps
        for target in TARGETS:
            out = target_of(target, process, x0, eps, t)
            torch.testing.assert_close(to_eps(target, process, out, xt, t), eps, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(to_x0(target, process, out, xt, t), x0, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(to_score(target, process, out, xt, t), -eps / s, atol=1e-3, rtol=1e-4)


def test_linear_path_velocity_is_eps_minus_x0():
    x0, eps, t = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(target_of("velocity", LinearPath(), x0, eps, t), eps - x0)


def test_sliced_w2_shift():
    """For P and P + delta, SW2^2 = E_theta (theta . delta)^2 = |delta|^2 / d."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=gen)
    delta = torch.tensor([1.0, 2.0, -2.0])
    sw = float(sliced_w2(x, x + delta, n_projections=2000, generator=gen))
    assert math.isclose(sw, math.sqrt(9.0 / 3), rel_tol=0.04)
    assert float(sliced_w2(x, x.clone(), generator=gen)) == 0.0


def test_mmd_and_frechet():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1500, 2, generator=gen), torch.randn(1500, 2, generator=gen)
    assert abs(float(mmd_rbf(a, b))) < 0.01 < float(mmd_rbf(a, b + 1.0))
    # Frechet distance of N(0, I) and N(m, 4I) in k dims: |m|^2 + k (1 + 4 - 2*2) = |m|^2 + k
    f1, f2 = torch.randn(100_000, 2, generator=gen), 2 * torch.randn(100_000, 2, generator=gen) + 1.0
    assert math.isclose(frechet_distance(f1, f2), 2.0 + 2.0, rel_tol=0.03)


def test_draw_uniform_and_normal_follow_the_generator_or_the_key():
    from core.utils.noise import draw_normal, draw_uniform, example_normal, example_uniform

    idx = torch.tensor([4, 0, 9])
    g, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    u, z = draw_uniform(idx, (2,), seed=1, step=3, generator=g), draw_normal(idx, (2, 2), seed=1, step=3, generator=g)
    assert torch.equal(u, torch.rand(3, 2, generator=ref)) and torch.equal(z, torch.randn(3, 2, 2, generator=ref))
    assert torch.equal(draw_uniform(idx, (2,), seed=1, step=3, stream=4), example_uniform(idx, (2,), 1, 3, 4))
    assert torch.equal(draw_normal(idx, (), seed=1, step=3), example_normal(idx, (), 1, 3))
    assert not torch.equal(draw_normal(idx, (), seed=1, step=3), draw_normal(idx, (), seed=1, step=4))
