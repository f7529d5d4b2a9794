"""Absorbing diffusion: marginals, loss weight, ELBO value, exact-sampler recovery, decoders."""

import itertools
import math

import pytest
import torch

from core.diffusion.masked import (
    MaskedDiffusion,
    MaskSchedule,
    confidence_decode,
    cosine_transfer_tokens,
    num_transfer_tokens,
    unmask_step,
)
from core.utils.nfe import EvalCounter

MASK = 3  # vocabulary {0, 1, 2}, mask id 3 (outside the logits)


def test_forward_marginal_matches_mask_probability():
    proc = MaskedDiffusion(MASK)
    x0 = torch.randint(0, 3, (4000, 50), generator=torch.Generator().manual_seed(0))
    for t in (0.0, 0.3, 1.0):
        xt = proc.kernel(t).sample(x0, torch.Generator().manual_seed(1))
        frac = (xt == MASK).float().mean().item()
        assert abs(frac - (1 - 1e-3) * t) < 3e-3
        assert torch.equal(xt[xt != MASK], x0[xt != MASK])  # unmasked tokens are untouched


def test_loglinear_weight_is_one_over_t_and_matches_s_formula():
    sch = MaskSchedule("loglinear", eps=1e-3)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(sch.weight(t), 1 / t, rtol=1e-6)
    # the paper's form s'(t) / (e^{s(t)} - 1), s'(t) by autograd, for every schedule
    for kind in ("loglinear", "cosine"):
        sch = MaskSchedule(kind)
        tt = t.clone().requires_grad_(True)
        s = sch.log_rate(tt)
        (ds,) = torch.autograd.grad(s.sum(), tt)
        assert torch.allclose(sch.weight(t), ds / torch.expm1(s.detach()), rtol=1e-6)
    assert MaskSchedule().weight(torch.tensor([0.0])).item() == 0.0


def test_loss_expectation_is_entropy_for_the_exact_one_token_model():
    """For one token and the model that predicts the data distribution pi, E_t[w(t) [masked] (-log pi)]
    = (int_0^1 m'(t) dt) H(pi) = (1 - eps) H(pi): the negative ELBO is the entropy."""
    g = torch.Generator().manual_seed(0)
    pi = torch.tensor([0.6, 0.3, 0.1])
    n = 200_000
    proc = MaskedDiffusion(MASK)
    x0 = torch.multinomial(pi, n, replacement=True, generator=g).unsqueeze(1)
    t = (torch.arange(n) + 0.5) / n  # stratified times
    xt = proc.kernel(t).sample(x0, g)
    logits = pi.log().expand(n, 1, 3)
    est = proc.loss(logits, x0, xt, t).mean().item()
    entropy = -(pi * pi.log()).sum().item()
    assert abs(est - (1 - 1e-3) * entropy) < 0.03 * entropy
    # a wrong model pays the cross-entropy instead
    wrong = proc.loss(torch.zeros(n, 1, 3), x0, xt, t).mean().item()
    assert abs(wrong - math.log(3)) < 0.03 * math.log(3)


def _joint():
    """A strongly dependent joint of two tokens over {0, 1, 2}: rows of configs (9, 2), probs pi (9,)."""
    configs = torch.tensor(list(itertools.product(range(3), repeat=2)))
    table = torch.tensor([[0.30, 0.02, 0.03], [0.01, 0.20, 0.04], [0.05, 0.05, 0.30]])
    return configs, table.flatten()


def _exact_model(configs, pi):
    """logits[b, i, v] = log p(x0_i = v | revealed tokens of x_b), by enumeration of the configs."""

    def model_fn(x, t):
        ok = ((configs.unsqueeze(0) == x.unsqueeze(1)) | (x.unsqueeze(1) == MASK)).all(-1)  # (B, C)
        w = pi.unsqueeze(0) * ok
        onehot = torch.nn.functional.one_hot(configs, 3).float()  # (C, L, V)
        return torch.einsum("bc,civ->biv", w, onehot).clamp_min(1e-30).log()

    return model_fn


def _tv(samples, configs, pi):
    idx = (samples * torch.tensor([3, 1])).sum(1)
    emp = torch.bincount(idx, minlength=9).float() / len(samples)
    order = (configs * torch.tensor([3, 1])).sum(1)
    return 0.5 * (emp[order] - pi).abs().sum().item()


@pytest.mark.parametrize("schedule,kind", [("loglinear", "ancestral"), ("cosine", "tau_leaping")])
def test_sampler_recovers_a_known_joint_distribution(schedule, kind):
    configs, pi = _joint()
    proc = MaskedDiffusion(MASK, schedule=schedule)
    counter = EvalCounter()
    x = torch.full((8000, 2), MASK)
    out = proc.sample(
        _exact_model(configs, pi),
        x,
        steps=100,
        kind=kind,
        generator=torch.Generator().manual_seed(1),
        counter=counter,
    )
    assert not (out.x == MASK).any()
    assert counter.calls == out.nfe <= 100
    assert _tv(out.x, configs, pi) < 0.03  # sampling noise ~0.013, same-step reveals bias < 0.01
    # the target has dependence: sampling each token from its marginal would fail the same test
    marg = [
        torch.einsum("c,cv->v", pi, torch.nn.functional.one_hot(configs[:, i], 3).float()) for i in range(2)
    ]
    g = torch.Generator().manual_seed(2)
    indep = torch.stack([torch.multinomial(m, 8000, True, generator=g) for m in marg], 1)
    assert _tv(indep, configs, pi) > 0.2


def test_ancestral_and_tau_leaping_coincide_for_loglinear_and_prompt_stays_fixed():
    proc = MaskedDiffusion(MASK)
    t, s = torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.1])
    assert torch.allclose(proc.reveal_prob(t, s, "ancestral"), proc.reveal_prob(t, s, "tau_leaping"))
    assert proc.reveal_prob(t, torch.zeros(2)).eq(1).all()
    configs, pi = _joint()
    x = torch.tensor([[0, MASK]]).repeat(500, 1)
    out = proc.sample(_exact_model(configs, pi), x, steps=20, generator=torch.Generator().manual_seed(0))
    assert out.x[:, 0].eq(0).all() and not (out.x == MASK).any()


def test_transfer_token_schedules():
    masked = torch.zeros(2, 12, dtype=torch.bool)
    masked[0, :10] = True
    masked[1, :3] = True
    assert num_transfer_tokens(masked, 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]
    cos = cosine_transfer_tokens(masked, 4)
    assert cos.sum(1).tolist() == [10, 3]
    assert cos[0, 0] < cos[0, -1] or cos[0].tolist() == sorted(cos[0].tolist())  # slow start, MaskGIT


def _ordered_model(V=5):
    """Prefers token (position mod V), more confidently at later positions."""

    def model_fn(x, t):
        B, L = x.shape
        logits = torch.zeros(B, L, V)
        pos = torch.arange(L)
        logits[:, pos, pos % V] = 1.0 + 0.5 * pos.float()
        return logits

    return model_fn


def test_llada_semi_autoregressive_topk_decoding():
    x = torch.full((2, 8), 9)  # mask id 9 outside the 5 logits
    x[:, 0] = 4  # prompt
    counter = EvalCounter()
    out = confidence_decode(
        _ordered_model(), x, steps=6, mask_id=9, block_length=4, counter=counter, return_trajectory=True
    )
    assert out.nfe == counter.calls == 6
    assert out.x[0].tolist() == [4, 1, 2, 3, 4, 0, 1, 2]
    # the first block (positions 1-4) is finished before the second is touched; within a block the most
    # confident (rightmost) position is revealed first, 2 per step (4 masked / 3 steps -> 2, 1, 1)
    step1 = out.trajectory[1][0]
    assert (step1[1:5] != 9).sum() == 2 and (step1[5:] == 9).all() and step1[4] != 9
    assert (out.trajectory[3][0][1:5] != 9).all() and (out.trajectory[3][0][5:] == 9).all()


def test_threshold_and_maskgit_decoding():
    x = torch.full((1, 6), 9)
    out = confidence_decode(_ordered_model(), x, steps=6, mask_id=9, threshold=0.3)
    # confidences exceed 0.3 only at the later positions; still at least one per step until done
    assert not (out.x == 9).any() and out.nfe < 6
    out = confidence_decode(
        _ordered_model(),
        x,
        steps=4,
        mask_id=9,
        schedule="cosine",
        temperature=1.0,
        confidence_noise=4.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert not (out.x == 9).any() and out.nfe == 4
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        confidence_decode(_ordered_model(), x, steps=5, mask_id=9, block_length=4)
    with pytest.raises(ValueError, match="unknown mask schedule"):
        MaskSchedule("exp")


def test_unmask_step_reveals_the_most_confident_allowed_positions_and_reports_confidences():
    x = torch.full((1, 6), 9)
    logits = _ordered_model()(x, None)
    allowed = torch.tensor([[True, True, True, False, False, True]])
    new, conf = unmask_step(logits, x, allowed, 9, count=torch.tensor([2]))
    assert new[0].tolist() == [9, 9, 2, 9, 9, 0]  # positions 5 and 2: the two most confident allowed
    assert torch.isinf(conf[0, 3]) and conf[0, 5] > conf[0, 2] > conf[0, 1] > 0
    new, _ = unmask_step(logits, x, allowed, 9, threshold=0.99)
    assert (new != 9).sum() == 1  # nothing passes the threshold: the single best is still revealed
    with pytest.raises(ValueError, match="count"):
        unmask_step(logits, x, allowed, 9)
