"""The ancestral (DDPM posterior) continuous step of core.diffusion.multimodal against the exact model of a known
mixed joint: it must recover the joint with far fewer steps than Euler-Maruyama needs, and x0 clipping
must keep samples in the box."""

import torch

from core.utils.nfe import EvalCounter
from tests.core.diffusion.test_multimodal import MU, S, _exact_model, _process, assert_recovers_the_joint


def test_ancestral_step_recovers_the_mixed_distribution_in_few_steps():
    proc = _process()
    counter = EvalCounter()
    out = proc.sample(
        _exact_model(proc),
        [(4000, 1), (4000, 1)],
        steps=40,
        generator=torch.Generator().manual_seed(1),
        counter=counter,
        continuous_step="ancestral",
    )
    assert_recovers_the_joint(out, counter, 40)


def test_ancestral_conditional_and_clipping():
    proc = _process()
    g = torch.Generator().manual_seed(2)
    given = (torch.zeros(3000, 1), torch.full((3000, 1), 2))
    # plugging in the posterior mean of x0 drops Var(x0 | x_t) from every step: slightly underdispersed
    # at a few dozen steps (std 0.44 of 0.5 at 40 steps here), 0.48 at 100
    out = proc.sample(
        _exact_model(proc),
        [(3000, 1), (3000, 1)],
        steps=100,
        generate=[0],
        given=given,
        generator=g,
        continuous_step="ancestral",
    )
    assert abs(out.x[0].mean() - MU[2]) < 0.05 and abs(out.x[0].std() - S) < 0.05
    assert (out.x[1] == 2).all()
    clipped = proc.sample(
        _exact_model(proc),
        [(3000, 1), (3000, 1)],
        steps=10,
        generate=[0],
        given=given,
        generator=g,
        continuous_step="ancestral",
        clip_x0=1.0,
    )
    assert clipped.x[0].abs().max() <= 1.0  # the last step returns the clipped x0 estimate


def test_unknown_continuous_step_is_rejected():
    proc = _process()
    try:
        proc.sample(_exact_model(proc), [(4, 1), (4, 1)], steps=2, continuous_step="heun")
    except ValueError as err:
        assert "continuous_step" in str(err)
    else:
        raise AssertionError("expected a ValueError")
