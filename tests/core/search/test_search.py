"""Search methods: an oracle model decodes the right answer in the expected number of steps, and every
method's NFE (verification passes included) is exact; voting, remasking and AUROC on tiny cases."""

import math

import torch

from core.tasks.arith import MASK_ID, NO_ID, YES_ID, ArithTask
from core.diffusion.masked import confidence_decode
from core.utils.nfe import EvalCounter
from core.search.prism import (
    PrismConfig,
    SelfVerifier,
    _duplicates,
    best_of_n,
    expected_prism_nfe,
    majority_vote,
    oracle_best_of_n,
    partial_remask,
    prism,
    sample_candidates,
    verification_by_step,
    weighted_vote,
)

TASK = ArithTask("mul", 3, 2)
V = MASK_ID + 1


def oracle_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Always predicts the right token: the target digits of the prompt's problem and, at a
    verification slot, Y iff the candidate is right."""
    na, nb = TASK.a_digits, TASK.b_digits
    pw = lambda n: 10 ** torch.arange(n - 1, -1, -1)  # noqa: E731
    a = (x[:, :na] * pw(na)).sum(1)
    b = (x[:, na + 1 : na + 1 + nb] * pw(nb)).sum(1)
    logits = torch.full((*x.shape, V), -10.0)
    tgt = TASK.targets(torch.stack([a, b], 1))
    logits[:, : TASK.gen_len].scatter_(2, tgt.unsqueeze(-1), 10.0)
    if x.shape[1] == TASK.verify_len:
        ok = TASK.check(x[:, : TASK.gen_len], torch.stack([a, b], 1))
        logits[:, -1, YES_ID] = torch.where(ok, 10.0, -10.0)
        logits[:, -1, NO_ID] = torch.where(ok, -10.0, 10.0)
    return logits


def problems(n=6, seed=0):
    a, b = TASK.sample_problems(n, "test", torch.Generator().manual_seed(seed)).T
    return a, b, TASK.prompts(torch.stack([a, b], 1))


def test_oracle_decodes_one_token_per_step():
    a, b, p = problems()
    c = EvalCounter()
    res = confidence_decode(oracle_model, p, TASK.n_answer, MASK_ID, temperature=0.7,
                            generator=torch.Generator().manual_seed(0), counter=c, return_trajectory=True)
    assert torch.equal(res.x, TASK.targets(torch.stack([a, b], 1)))
    assert res.nfe == c.calls == TASK.n_answer and c.items == len(a) * TASK.n_answer
    for i, xi in enumerate(res.trajectory):  # after step i, exactly i answer tokens are revealed
        assert ((xi != MASK_ID) & TASK.answer_slots).sum(1).eq(i).all()


def test_best_of_n_majority_oracle_nfe_and_answers():
    a, b, p = problems()
    c = EvalCounter()
    cands = sample_candidates(oracle_model, p, 4, TASK.n_answer, MASK_ID, counter=c,
                              generator=torch.Generator().manual_seed(0))
    assert cands.shape == (6, 4, TASK.gen_len) and c.items == 6 * 4 * TASK.n_answer
    ver = SelfVerifier(oracle_model, TASK.verify_inputs, MASK_ID, YES_ID, NO_ID)
    scores = ver(cands.flatten(0, 1), c).reshape(6, 4)
    assert c.items == 6 * 4 * (TASK.n_answer + 1)  # verification passes are charged too
    assert torch.allclose(scores, torch.ones_like(scores), atol=1e-6)
    assert TASK.check(best_of_n(cands, scores), torch.stack([a, b], 1)).all()
    keys = TASK.final_answer(cands.flatten(0, 1)).reshape(6, 4)
    assert TASK.check(majority_vote(cands, keys), torch.stack([a, b], 1)).all()


def test_votes_on_a_tiny_case():
    cands = torch.arange(4).reshape(1, 4, 1)
    keys = torch.tensor([[7, 8, 8, 9]])
    assert majority_vote(cands, keys).item() == 1  # answer 8 twice
    assert weighted_vote(cands, keys, torch.tensor([[0.9, 0.3, 0.3, 0.1]])).item() == 0  # 0.9 > 0.6
    assert best_of_n(cands, torch.tensor([[0.1, 0.2, 0.5, 0.4]])).item() == 2
    assert oracle_best_of_n(torch.tensor([[False, True], [False, False]])).tolist() == [True, False]


def test_prism_widths_and_nfe_by_hand():
    cfg = PrismConfig(n_initial=16, min_width=2, window=(0.1, 0.6))
    assert list(cfg.widths(13).items()) == [(1, 9), (2, 5), (3, 3), (4, 2)]  # ceil(16 * 1.8^-k)
    # steps 0..12 at widths 16,16,9,5,3,2x8 + verification of 16,9,5,3 at the prunings + 2 at the end
    assert expected_prism_nfe(cfg, 13) == 16 + 16 + 9 + 5 + 3 + 2 * 8 + (16 + 9 + 5 + 3) + 2 == 100
    assert expected_prism_nfe(PrismConfig(self_verify=False), 13) == 16 + 16 + 9 + 5 + 3 + 2 * 8
    assert 100 <= (16 * 13 + 16) / 2  # at most half of self-verified best-of-16


def test_prism_with_oracle_is_right_and_counts_exactly():
    a, b, p = problems()
    ver = SelfVerifier(oracle_model, TASK.verify_inputs, MASK_ID, YES_ID, NO_ID)
    for cfg in (PrismConfig(), PrismConfig(remask=False), PrismConfig(self_verify=False),
                PrismConfig(n_initial=8, min_width=1, remask_tokens=2, prune_every=2)):
        c = EvalCounter()
        ans, info = prism(oracle_model, p, TASK.n_answer, MASK_ID, TASK.final_answer, cfg, ver,
                          generator=torch.Generator().manual_seed(0), counter=c)
        assert TASK.check(ans, torch.stack([a, b], 1)).all()
        assert c.items == len(a) * expected_prism_nfe(cfg, TASK.n_answer)
        assert c.calls == TASK.n_answer + len(cfg.widths(TASK.n_answer)) * cfg.self_verify + cfg.self_verify
        assert info["survivors"].shape[1] == max(cfg.min_width, math.ceil(cfg.n_initial * cfg.shrink ** -len(
            cfg.widths(TASK.n_answer))))


def test_partial_remask_picks_low_confidence_decoded_tokens():
    x = torch.arange(10).repeat(3, 1)
    decoded = torch.ones(3, 10, dtype=torch.bool)
    decoded[:, :2] = False  # a prompt: never remasked
    conf = torch.linspace(0.0, 1.0, 10).repeat(3, 1)  # positions 2, 3, ... are the least confident
    which = torch.tensor([True, True, False])
    out = partial_remask(x, conf, decoded, which, r=2, pool=3, mask_id=99, generator=torch.Generator().manual_seed(0))
    m = out == 99
    assert m[:2].sum(1).tolist() == [2, 2] and not m[2].any()
    assert not m[:, :2].any() and not m[:, 8:].any()  # only among the 3 * 2 least confident decoded
    assert torch.equal(out[~m], x[~m])


def test_duplicates():  # the AUROC's tests: tests/core/eval/test_auroc.py
    x = torch.tensor([[[1, 2], [1, 2], [3, 4], [1, 2]]])
    assert _duplicates(x).tolist() == [[False, True, False, True]]


def test_verification_by_step_counts_two_passes_per_step():
    a, b, p = problems(4)
    ver = SelfVerifier(oracle_model, TASK.verify_inputs, MASK_ID, YES_ID, NO_ID)
    c = EvalCounter()
    comps, scores = verification_by_step(oracle_model, p, TASK.n_answer, MASK_ID, ver, counter=c)
    assert comps.shape == (TASK.n_answer, 4, TASK.gen_len) and c.items == 4 * 2 * TASK.n_answer
    # the oracle's greedy guess is right
    assert TASK.check(comps[0], torch.stack([a, b], 1)).all() and (scores > 0.99).all()
