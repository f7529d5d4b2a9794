"""Multimodal process with per-group times: time draws, noising, losses, and exact-model sampling of a
known mixed (continuous, discrete) joint, its two conditionals, replacement and noisy guidance."""

import math

import pytest
import torch

from core.diffusion.masked import MaskedDiffusion
from core.diffusion.multimodal import MultimodalProcess, Part
from core.utils.nfe import EvalCounter

PI = torch.tensor([0.5, 0.3, 0.2])
MU = torch.tensor([-2.0, 0.0, 2.5])
S = 0.5
MASK = 3


def _process():
    parts = [Part("continuous", (0,)), Part("discrete", (1,))]
    return MultimodalProcess(parts, n_groups=2, discrete=MaskedDiffusion(MASK))


def _exact_model(proc):
    """Exact x0-posterior of y ~ PI, x | y ~ N(MU_y, S^2) under any pair of times (t_x, t_y)."""
    vp = proc.continuous

    def model_fn(state, t_groups):
        x, y = state
        a = vp.alpha(t_groups[:, :1])
        sig = vp.sigma(t_groups[:, :1])
        var = a**2 * S**2 + sig**2  # (B, 1) variance of x_t given y
        loglik = -0.5 * (x - a * MU) ** 2 / var - 0.5 * torch.log(var)  # (B, 3)
        logpost = torch.log(PI) + loglik
        known = y[:, 0] != MASK
        onehot = torch.nn.functional.one_hot(y[:, 0].clamp_max(2), 3).bool()
        logpost = torch.where(known.unsqueeze(1), torch.where(onehot, 0.0, -math.inf), logpost)
        post = torch.softmax(logpost, 1)
        mean_x0 = (post * (MU + a * S**2 * (x - a * MU) / var)).sum(1, keepdim=True)
        eps = (x - a * mean_x0) / sig.clamp_min(1e-6)
        return eps, torch.log_softmax(logpost, 1).unsqueeze(1)

    return model_fn


def _joint_draw(n, g):
    y = torch.multinomial(PI, n, True, generator=g)
    return MU[y] + S * torch.randn(n, generator=g), y


def test_draw_times_modes():
    proc = _process()
    u = torch.rand(5000, 4, generator=torch.Generator().manual_seed(0))
    t = proc.draw_times(u, shared=True)
    assert torch.equal(t[:, 0], t[:, 1]) and t.min() >= proc.t_min
    t = proc.draw_times(u, p_condition=1.0)
    assert ((t == 0).sum(1) == 1).all()
    t = proc.draw_times(u, p_condition=0.2, p_equal=0.3)
    zero = (t == 0).any(1).float().mean()
    equal = (t[:, 0] == t[:, 1]).float().mean()
    assert abs(zero - 0.2) < 0.03 and abs(equal - 0.3) < 0.03
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        proc.draw_times(torch.rand(3, 2))


def test_per_group_noise_and_losses():
    proc = _process()
    g = torch.Generator().manual_seed(0)
    x, y = _joint_draw(1000, g)
    x0 = (x.unsqueeze(1), y.unsqueeze(1))
    noise = (torch.randn(1000, 1, generator=g), torch.rand(1000, 1, generator=g))
    t = torch.tensor([[0.0, 1.0]]).expand(1000, 2)  # x clean, y fully noised
    xt = proc.add_noise(x0, t, noise)
    assert torch.equal(xt[0], x0[0]) and (xt[1] == MASK).float().mean() > 0.99
    losses = proc.losses((torch.randn(1000, 1), torch.zeros(1000, 1, 3)), x0, xt, noise, t)
    assert losses[0].abs().max() == 0  # nothing noised at t = 0, nothing to learn
    assert torch.allclose(losses[1].mean(), torch.tensor(math.log(3)), atol=0.02)  # weight 1/t = 1 at t = 1


def test_joint_sampling_with_exact_model_recovers_the_mixed_distribution():
    proc = _process()
    counter = EvalCounter()
    out = proc.sample(
        _exact_model(proc),
        [(4000, 1), (4000, 1)],
        steps=200,
        generator=torch.Generator().manual_seed(1),
        counter=counter,
    )
    assert_recovers_the_joint(out, counter, 200)


def assert_recovers_the_joint(out, counter: EvalCounter, steps: int) -> None:
    """A joint sample (x, y) of the known mixed law: ``steps`` counted calls, no mask left, the class
    frequencies within 0.03 total variation of PI, each class's x with the right mean and std."""
    x, y = out.x[0][:, 0], out.x[1][:, 0]
    assert counter.calls == out.nfe == steps
    assert (y != MASK).all()
    freq = torch.bincount(y, minlength=3).float() / len(y)
    assert 0.5 * (freq - PI).abs().sum() < 0.03
    for k in range(3):
        xs = x[y == k]
        assert abs(xs.mean() - MU[k]) < 0.1 and abs(xs.std() - S) < 0.08


def test_each_conditional_from_the_same_model():
    proc = _process()
    model = _exact_model(proc)
    g = torch.Generator().manual_seed(2)
    x, y = _joint_draw(4000, g)
    # y | x: clean x held at t = 0, the answer is the exact posterior p(y | x)
    given = (x.unsqueeze(1), torch.full((4000, 1), MASK))
    out = proc.sample(model, [(4000, 1), (4000, 1)], steps=50, generate=[1], given=given, generator=g)
    assert torch.equal(out.x[0], given[0])
    post = torch.softmax(torch.log(PI) - 0.5 * (x.unsqueeze(1) - MU) ** 2 / S**2, 1)
    gen = torch.nn.functional.one_hot(out.x[1][:, 0], 3).float()
    assert (gen.mean(0) - post.mean(0)).abs().max() < 0.02
    assert (out.x[1][:, 0] == y).float().mean() > 0.9  # the classes are well separated
    # x | y = 2
    given = (torch.zeros(4000, 1), torch.full((4000, 1), 2))
    out = proc.sample(model, [(4000, 1), (4000, 1)], steps=200, generate=[0], given=given, generator=g)
    assert abs(out.x[0].mean() - MU[2]) < 0.05 and abs(out.x[0].std() - S) < 0.05
    assert (out.x[1] == 2).all()


def test_replacement_and_noisy_guidance():
    proc = _process()
    model = _exact_model(proc)
    g = torch.Generator().manual_seed(3)
    given = (torch.zeros(2000, 1), torch.full((2000, 1), 0))
    counter = EvalCounter()
    out = proc.sample(
        model,
        [(2000, 1), (2000, 1)],
        steps=100,
        generate=[0],
        given=given,
        replacement=True,
        generator=g,
        counter=counter,
    )
    assert (out.x[1] == 0).all() and counter.calls == 100
    assert abs(out.x[0].mean() - MU[0]) < 0.15
    # guidance costs a second evaluation per step inside its window and sharpens the conditional
    counter.reset()
    out_g = proc.sample(
        model,
        [(2000, 1), (2000, 1)],
        steps=100,
        generate=[0],
        given=given,
        guidance=2.0,
        guidance_window=(0.2, 0.8),
        generator=g,
        counter=counter,
    )
    grid = torch.linspace(1.0, 0.0, 101)[:-1]
    in_window = sum(0.2 <= float(t) <= 0.8 for t in grid)
    assert counter.calls == 100 + in_window
    assert out_g.x[0].mean() < MU[0] + 0.05  # pushed away from the unconditional mixture mean
    with pytest.raises(ValueError, match="given"):
        proc.sample(model, [(4, 1), (4, 1)], steps=2, generate=[0])
