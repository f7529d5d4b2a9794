"""Exact-answer tests of core/rl/objectives.py + core/rl/likelihood.py and the FlowGRPO rollouts of
core/diffusion/flow.py (RL fine-tuning of flow models)."""

from __future__ import annotations

import math

import pytest
import torch

from core.diffusion.solvers import time_grid
from core.utils.nfe import EvalCounter
from core.rl.objectives import (
    elbo,
    elbo_draws,
    elbo_weight,
    epg_loss,
    flow_sample,
    flow_sde_step,
    group_advantages,
    inverse_proposal_density,
    nft_loss,
    nft_reward_prob,
    per_step_kl,
    per_step_logprob,
    ppo_clip_loss,
    sde_std,
)


@torch.no_grad()
def sde_rollout(x1, times, vel, noise_level=0.7, generator=None, counter=None, **opts):
    """A FlowGRPO rollout, as core.rl's callers make it (states kept for the per-step likelihood)."""
    return flow_sample(x1, times, velocity=vel, solver="sde", sde_noise="flowgrpo", noise_level=noise_level,
                       generator=generator, counter=counter, return_trajectory=True, **opts)


@torch.no_grad()
def ode_rollout(x1, times, vel, counter=None):
    return flow_sample(x1, times, velocity=vel, solver="euler", counter=counter, return_trajectory=True)


def rollout_times(steps):
    return time_grid(1.0, 0.0, steps)


def states(traj):
    return torch.stack(traj.trajectory)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def gaussian_velocity(m: torch.Tensor, s: float):
    """Exact velocity E[eps - x0 | x_t = x] of the path when x0 ~ N(m, s^2 I)."""

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = t.reshape(-1, *([1] * (x.ndim - 1)))
        c = (1 - tb) ** 2 * s**2 + tb**2
        return (tb - (1 - tb) * s**2) * (x - (1 - tb) * m) / c - m

    return v


def gaussian_logpdf(x: torch.Tensor, m: torch.Tensor, s: float) -> torch.Tensor:
    d = x.shape[-1]
    return -((x - m) ** 2).sum(-1) / (2 * s**2) - 0.5 * d * math.log(2 * math.pi * s**2)


class TinyVelocity(torch.nn.Module):
    def __init__(self, dim: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


def test_flow_sde_step_matches_formula():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t, dt, a = 0.6, -0.1, 0.7
    mean, std = flow_sde_step(x, v, t, dt, a)
    std_t = a * math.sqrt(t / (1 - t))
    expect = x * (1 + std_t**2 / (2 * t) * dt) + v * (1 + std_t**2 * (1 - t) / (2 * t)) * dt
    torch.testing.assert_close(mean, expect)
    assert std == pytest.approx(std_t * math.sqrt(0.1))
    # at t = 1 the denominator's sigma is capped at the next grid time (FlowGRPO's sigmas[1])
    assert sde_std(1.0, -0.25, a) == pytest.approx(a * math.sqrt(1.0 / 0.25))
    assert math.isfinite(sde_std(1.0, -1e-9, a))
    mean0, std0 = flow_sde_step(x, v, t, dt, noise_level=0.0)
    torch.testing.assert_close(mean0, x + v * dt)
    assert std0 == 0.0
    with pytest.raises(ValueError, match="dt must be < 0"):
        flow_sde_step(x, v, t, 0.1)


def test_sde_rollout_transitions_are_mean_plus_std_noise():
    vel = TinyVelocity(3)
    times = rollout_times(4)
    x1 = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    zs = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(2))
    traj = sde_rollout(x1, times, vel, 0.7, noise_fn=lambda k: zs[k])
    xs = states(traj)
    assert xs.shape == (5, 6, 3) and traj.stds.shape == (4,) and traj.nfe == 4
    torch.testing.assert_close(traj.x, xs[-1])
    for k in range(4):
        t, dt = float(times[k]), float(times[k + 1] - times[k])
        with torch.no_grad():
            mean, std = flow_sde_step(xs[k], vel(xs[k], torch.full((6,), t)), t, dt, 0.7)
        assert float(traj.stds[k]) == pytest.approx(std)
        torch.testing.assert_close(xs[k + 1], mean + std * zs[k])


def test_per_step_logprob_one_step_closed_form():
    # v(x, t) = 2x + t: the 1-step transition is N(mean, std^2) with mean and std in closed form
    t0, t1, a = 0.8, 0.3, 0.7
    x1 = torch.tensor([[0.4], [-1.3]])
    vel = lambda x, t: 2 * x + t[:, None]  # noqa: E731
    traj = sde_rollout(x1, torch.tensor([t0, t1]), vel, a, generator=torch.Generator().manual_seed(3))
    dt = t1 - t0
    std_t = a * math.sqrt(t0 / (1 - t0))
    mean = x1 * (1 + std_t**2 / (2 * t0) * dt) + (2 * x1 + t0) * (1 + std_t**2 * (1 - t0) / (2 * t0)) * dt
    std = std_t * math.sqrt(-dt)
    expect = torch.distributions.Normal(mean[:, 0], std).log_prob(traj.x[:, 0])
    torch.testing.assert_close(per_step_logprob(traj, vel, a), expect)


def test_identical_policies_give_zero_logratio():
    vel, same = TinyVelocity(2, seed=0), TinyVelocity(2, seed=0)
    g = torch.Generator().manual_seed(4)
    traj = sde_rollout(torch.randn(8, 2, generator=g), rollout_times(5), vel, generator=g)
    lr = per_step_logprob(traj, vel) - per_step_logprob(traj, same)
    assert torch.equal(lr, torch.zeros(8))
    t, eps = elbo_draws(8, (2,), mc=3, generator=g)
    for w in ("uniform", "elbo"):
        assert torch.equal(elbo(vel, traj.x, t, eps, w) - elbo(same, traj.x, t, eps, w), torch.zeros(8))
    assert torch.equal(per_step_kl(traj, vel, same), torch.zeros(8))


def test_per_step_needs_a_noisy_rollout_and_consistent_noise_level():
    vel = TinyVelocity(2)
    x1 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="no noisy step"):
        per_step_logprob(ode_rollout(x1, rollout_times(3), vel), vel)
    traj = sde_rollout(x1, rollout_times(3), vel, 0.7, noisy_steps=[1])
    assert traj.noisy_steps == [1] and float(traj.stds[0]) == 0.0
    with pytest.raises(ValueError, match="not noisy steps"):
        per_step_logprob(traj, vel, 0.7, steps=[0])
    with pytest.raises(ValueError, match="noise_level"):
        per_step_logprob(traj, vel, 0.5)
    with pytest.raises(ValueError, match="decrease"):
        sde_rollout(x1, torch.tensor([0.0, 1.0]), vel)


def test_per_step_kl_by_hand():
    # velocity_ref = velocity + c shifts every transition mean by c (1 + std_t^2 (1-t)/(2t)) dt
    c, a = 0.3, 0.7
    vel = lambda x, t: -x  # noqa: E731
    ref = lambda x, t: -x + c  # noqa: E731
    times = torch.tensor([0.9, 0.5, 0.2])
    traj = sde_rollout(torch.randn(3, 2), times, vel, a)
    expect = 0.0
    for k in range(2):
        t, dt = float(times[k]), float(times[k + 1] - times[k])
        std_t = a * math.sqrt(t / (1 - t))
        dmu = c * (1 + std_t**2 * (1 - t) / (2 * t)) * dt
        expect += 2 * dmu**2 / (2 * std_t**2 * -dt)  # 2 dims
    torch.testing.assert_close(per_step_kl(traj, vel, ref, a), torch.full((3,), expect))


def test_ode_rollout_constant_velocity_lands_exactly():
    c = torch.tensor([0.5, -2.0])
    x1 = torch.randn(4, 2)
    traj = ode_rollout(x1, rollout_times(7), lambda x, t: c.expand_as(x))
    torch.testing.assert_close(traj.x, x1 - c)
    assert torch.equal(traj.stds, torch.zeros(7))


def test_elbo_weighting_gives_exact_gaussian_logratio():
    """With exact velocities of N(m1, s1^2) and N(m2, s2^2) the "elbo" weighting's log-ratio is
    log N(x0; m2, s2^2) - log N(x0; m1, s1^2) (tight bound), up to MC error and t-truncation."""
    m1, s1 = torch.zeros(2), 1.0
    m2, s2 = torch.tensor([0.3, -0.2]), 0.7
    x0 = torch.tensor([0.5, -1.0])
    exact = float(gaussian_logpdf(x0, m2, s2) - gaussian_logpdf(x0, m1, s1))
    n = 40000  # n single-draw estimates at the same x0 -> their mean and its standard error
    xs = x0.expand(n, 2).clone()
    t_range = (0.001, 0.999)
    t, eps = elbo_draws(n, (2,), mc=1, generator=torch.Generator().manual_seed(5), t_range=t_range)
    est = elbo(gaussian_velocity(m2, s2), xs, t, eps, "elbo", t_range=t_range)
    est = est - elbo(gaussian_velocity(m1, s1), xs, t, eps, "elbo", t_range=t_range)
    se = float(est.std()) / math.sqrt(n)
    assert abs(float(est.mean()) - exact) < 4 * se + 0.01, (float(est.mean()), exact, se)
    # the uniform weighting is a different functional: it does not recover the log-ratio here
    est_u = elbo(gaussian_velocity(m2, s2), xs, t, eps, "uniform") - elbo(gaussian_velocity(m1, s1), xs, t, eps)
    assert abs(float(est_u.mean()) - exact) > 10 * float(est_u.std()) / math.sqrt(n)


@pytest.mark.parametrize("proposal", ["uniform", "loguniform"])
def test_elbo_variance_reduced_draws_keep_the_exact_gaussian_logratio(proposal):
    m1, s1, m2, s2 = torch.zeros(2), 1.0, torch.tensor([0.3, -0.2]), 0.7
    x0 = torch.tensor([-0.4, 0.8])
    exact = float(gaussian_logpdf(x0, m2, s2) - gaussian_logpdf(x0, m1, s1))
    n, mc, t_range = 4000, 8, (0.001, 0.999)
    xs = x0.expand(n, 2).clone()
    t, eps = elbo_draws(n, (2,), mc, torch.Generator().manual_seed(7), t_range, stratified=True,
                        proposal=proposal, antithetic=True)
    torch.testing.assert_close(eps[4:], -eps[:4])
    kw = {"t_range": t_range, "proposal": proposal}
    est = elbo(gaussian_velocity(m2, s2), xs, t, eps, "elbo", **kw) - elbo(gaussian_velocity(m1, s1), xs, t, eps,
                                                                           "elbo", **kw)
    se = float(est.std()) / math.sqrt(n)
    assert abs(float(est.mean()) - exact) < 4 * se + 0.01, (float(est.mean()), exact, se)
    # 1/q(t) is the right inverse density: its mean under the proposal is the range's length
    assert float(inverse_proposal_density(t, t_range, proposal).mean()) == pytest.approx(0.998, rel=0.02)


def test_elbo_weight_integrates_to_exact_gaussian_logdensity_by_quadrature():
    # E_eps |u - v*|^2 at data x0 for the model N(m, s^2): (1 - k t)^2 + y^2 t^2 / c^2 per dim, y = x0 - m,
    # so the y-dependent part of -1/2 int w(t) E|.|^2 dt must be -y^2 / (2 s^2) (= log-density's)
    t = torch.linspace(1e-6, 1 - 1e-6, 400001)
    for s in (0.5, 1.0, 2.0):
        c = (1 - t) ** 2 * s**2 + t**2
        integral = torch.trapezoid(elbo_weight(t, "elbo") * t**2 / c**2, t)
        assert float(integral) == pytest.approx(1.0 / s**2, rel=1e-3)


def test_elbo_draws_and_bad_input():
    t, eps = elbo_draws(5, (3, 2), mc=4, generator=torch.Generator().manual_seed(0), stratified=True)
    assert t.shape == (4, 5) and eps.shape == (4, 5, 3, 2)
    lo, hi = 0.02, 0.98
    for m in range(4):  # stratum m of 4
        assert bool(((t[m] >= lo + (hi - lo) * m / 4) & (t[m] <= lo + (hi - lo) * (m + 1) / 4)).all())
    with pytest.raises(ValueError, match="weighting"):
        elbo_weight(t, "snr")
    with pytest.raises(ValueError, match="mc must be even"):
        elbo_draws(5, (2,), mc=3, antithetic=True)
    with pytest.raises(ValueError, match="needs the draws' t_range"):
        elbo(lambda x, tt: x, torch.zeros(5, 3, 2), t, eps, proposal="loguniform")
    with pytest.raises(ValueError, match="eps must be"):
        elbo(lambda x, tt: x, torch.zeros(5, 2), t, eps)


def test_group_advantages_hand_table():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2], [3.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(r, clip=1.5, eps=0.0 + 1e-12)
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    torch.testing.assert_close(adv[1], torch.zeros(4))
    # row 3: mean 0.75, population std sqrt(3) * 0.75 -> (3 - .75)/(1.299) = 1.732 clipped to 1.5
    torch.testing.assert_close(adv[2], torch.tensor([1.5, -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)]))
    with pytest.raises(ValueError, match="B prompts"):
        group_advantages(torch.zeros(4))


def test_epg_gradient_is_minus_adv_grad_rho():
    lr = torch.tensor([0.1, -0.3, 0.0, 0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    epg_loss(lr, adv).backward()
    torch.testing.assert_close(lr.grad, -adv * torch.exp(lr.detach()) / 4)


def test_ppo_clip_gradient_vanishes_outside_clip_region_in_the_right_direction():
    c = 0.2
    lr = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    ppo_clip_loss(lr, adv, c).backward()
    rho = torch.exp(lr.detach())
    # A>0, rho>1+c: clipped (no gain from raising rho further): 0; A<0, rho<1-c: clipped: 0;
    # A>0 with rho<1-c and A<0 with rho>1+c stay unclipped (pessimistic bound); inside: unclipped
    expect = torch.tensor([0.0, -adv[1] * rho[1], -adv[2] * rho[2], 0.0, -adv[4] * rho[4]]) / 5
    torch.testing.assert_close(lr.grad, expect)


def test_nft_reward_prob_and_loss_by_hand():
    torch.testing.assert_close(nft_reward_prob(torch.tensor([-7.0, -5.0, 0.0, 2.0, 9.0])),
                               torch.tensor([0.0, 0.0, 0.5, 0.7, 1.0]))
    # one example, 2 dims: x_t = [1, 0], x0 = [0, 1], t = 0.5, v_old = [1, -1], v_theta = [3, -1], beta = 0.5
    x_t, x0, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0.5])
    v_old, v_th = torch.tensor([[1.0, -1.0]]), torch.tensor([[3.0, -1.0]])
    r = torch.tensor([0.7])
    # v+ = [2, -1] -> x0+ = [0, .5], err [0, -.5], w+ = .25, |.|^2/w mean = (.25/.25)/2 = .5
    # v- = [0, -1] -> x0- = [1, .5], err [1, -.5], w- = .75, mean((1 + .25)/.75)/2 = 5/6
    expect = 0.7 * 0.5 + 0.3 * 5 / 6
    assert float(nft_loss(v_th, v_old, x_t, x0, t, r, 0.5)) == pytest.approx(expect)
    assert float(nft_loss(v_th, v_old, x_t, x0, t, r, 0.5, scale=10.0)) == pytest.approx(10 * expect)


def test_nft_gradient_at_old_policy_is_beta_free_with_paper_scale():
    # at v_theta = v_old: grad = scale * 2 t beta (1 - 2r) (p - x0) / (w D), p = x_t - t v_old
    g = torch.Generator().manual_seed(6)
    x_t, x0, v_old = (torch.randn(3, 4, generator=g) for _ in range(3))
    t, r = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.1, 0.5, 1.0])
    p = x_t - t[:, None] * v_old
    w = (p - x0).abs().mean(1, keepdim=True)
    grads = []
    for beta in (1.0, 0.1, 1e-3):
        v = v_old.clone().requires_grad_(True)
        nft_loss(v, v_old, x_t, x0, t, r, beta, scale=5.0 / beta).backward()
        grads.append(v.grad)
        expect = (5.0 / beta) * 2 * t[:, None] * beta * (1 - 2 * r[:, None]) * (p - x0) / (w * 4) / 3
        torch.testing.assert_close(v.grad, expect)
    torch.testing.assert_close(grads[0], grads[2])


def test_counter_counts_exact_calls():
    vel, ref = TinyVelocity(2), TinyVelocity(2, seed=1)
    counter = EvalCounter()
    traj = sde_rollout(torch.randn(6, 2), rollout_times(5), vel, counter=counter)
    assert (counter.calls, counter.items) == (5, 30)
    per_step_logprob(traj, vel, counter=counter)
    assert (counter.calls, counter.items) == (10, 60)
    per_step_logprob(traj, vel, steps=[0, 2], counter=counter)
    assert (counter.calls, counter.items) == (12, 72)
    per_step_kl(traj, vel, ref, counter=counter)
    assert (counter.calls, counter.items) == (22, 132)
    t, eps = elbo_draws(6, (2,), mc=3)
    elbo(vel, traj.x, t, eps, counter=counter)
    assert (counter.calls, counter.items) == (25, 150)
    ode_rollout(torch.randn(6, 2), rollout_times(4), vel, counter=counter)
    assert (counter.calls, counter.items) == (29, 174)


def test_per_step_logprob_is_differentiable_in_parameters():
    vel = TinyVelocity(2)
    traj = sde_rollout(torch.randn(4, 2), rollout_times(3), vel)
    per_step_logprob(traj, vel).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vel.parameters())
    vel.zero_grad()
    t, eps = elbo_draws(4, (2,), mc=2)
    elbo(vel, traj.x, t, eps, "elbo").sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in vel.parameters())


def test_image_shaped_states():
    # (N, C, H, W) states: sums run over all non-batch dims; a linear velocity keeps it exact and cheap
    w = torch.randn(3, 1, 1)
    vel = lambda x, t: -w * x + t[:, None, None, None]  # noqa: E731
    x1 = torch.randn(2, 3, 4, 4)
    traj = sde_rollout(x1, rollout_times(3), vel)
    assert states(traj).shape == (4, 2, 3, 4, 4)
    lp = per_step_logprob(traj, vel)
    assert lp.shape == (2,) and torch.isfinite(lp).all()
    t, eps = elbo_draws(2, (3, 4, 4), mc=2)
    e = elbo(vel, traj.x, t, eps, "elbo", t_range=(0.02, 0.98))
    terms = []
    for m in range(2):
        tb = t[m].view(-1, 1, 1, 1)
        err = vel((1 - tb) * traj.x + tb * eps[m], t[m]) - (eps[m] - traj.x)
        terms.append(2 * (1 - t[m]) / t[m] * 0.96 * (err**2).sum((1, 2, 3)))
    expect = -0.5 * torch.stack(terms).mean(0)
    torch.testing.assert_close(e, expect)
