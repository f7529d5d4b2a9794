"""Arithmetic task: layout, exact checker, held-out split, verification labels."""

import pytest
import torch

from core.tasks.arith import MASK_ID, NO_ID, TOK, YES_ID, ArithTask, decode, encode


def test_layout_of_a_known_product():
    task = ArithTask("mul", 3, 2)
    x = task.targets(torch.tensor([[123, 45]]))
    # 123*5 = 615 -> 0615 reversed; 123*4 = 492 -> 0492 reversed; 5535 -> 05535 reversed
    assert decode(x[0]) == "123*45=5160,2940,53550"
    assert x.shape[1] == task.gen_len == 22 and task.n_answer == 13
    assert decode(task.prompts(torch.tensor([[123, 45]]))[0]) == "123*45=____,____,_____"
    add = ArithTask("add", 2, 2)
    assert decode(add.targets(torch.tensor([[99, 18]]))[0]) == "99+18=711"


def test_checker_is_exact():
    task = ArithTask("mul", 3, 2)
    g = torch.Generator().manual_seed(0)
    p = task.sample_problems(300, "test", g)
    x = task.targets(p)
    assert task.check(x, p).all()
    assert torch.equal(task.final_answer(x), p[:, 0] * p[:, 1])
    y = x.clone()
    y[:, task.final_slice.start] = (y[:, task.final_slice.start] + 1) % 10  # ones digit changed
    assert not task.check(y, p).any()
    z = x.clone()
    z[:, -1] = MASK_ID
    assert not task.check(z, p).any()
    # a wrong scratchpad with the right product is still right: only the answer is checked
    s = x.clone()
    s[:, task.prompt_len] = (s[:, task.prompt_len] + 3) % 10
    assert task.check(s, p).all()


def test_splits_are_disjoint_and_distinct():
    task = ArithTask("mul", 2, 2)
    g = torch.Generator().manual_seed(1)
    a, b = task.sample_problems(1000, "test", g).T
    assert len(set(zip(a.tolist(), b.tolist()))) == 1000
    assert ((a >= 10) & (a < 100) & (b >= 10) & (b < 100)).all()
    tr = set(map(tuple, task.sample_problems(3000, "train", g).tolist()))
    assert not tr & set(zip(a.tolist(), b.tolist()))


def test_verification_examples_are_labelled_by_the_checker():
    task = ArithTask("mul", 3, 2)
    g = torch.Generator().manual_seed(2)
    p = task.sample_problems(2000, "train", g)
    q, v = task.verification_examples(p, g)
    assert q.shape == (2000, task.verify_len)
    assert (q[:, -2] == TOK["?"]).all() and (q[:, -1] == MASK_ID).all()
    ok = task.check(q[:, : task.gen_len], p)
    assert torch.equal(v == YES_ID, ok) and torch.equal(v == NO_ID, ~ok)
    assert 0.4 < ok.float().mean() < 0.6


def _parse(task: ArithTask, x: torch.Tensor) -> list[torch.Tensor]:
    """The answer region's numbers (B,) each, digits least significant first."""
    out, pos = [], task.prompt_len
    for w in task.widths:
        out.append((x[:, pos : pos + w] * 10 ** torch.arange(w)).sum(1))
        pos += w + 1
    return out


def test_negatives_include_consistent_wrong_scratchpads():
    """Half of the negatives are wrong partial products summed correctly: a check of the scratchpad's
    arithmetic alone cannot catch them, only one against the prompt."""
    task = ArithTask("mul", 2, 2)
    g = torch.Generator().manual_seed(3)
    p = task.sample_problems(4000, "train", g)
    q, v = task.verification_examples(p, g)
    nums = _parse(task, q[:, : task.gen_len])
    summed = sum(n * 10**j for j, n in enumerate(nums[:-1])) % 10 ** task.widths[-1]
    consistent = summed == nums[-1]
    wrong = v == NO_ID
    frac = (consistent & wrong).sum() / wrong.sum()
    assert 0.35 < frac < 0.65  # about half of the negatives (the others rarely happen to be consistent)
    truth = [p[:, 0] * ((p[:, 1] // 10**j) % 10) for j in range(task.b_digits)]
    bad_partials = sum((n != t).long() for n, t in zip(nums, truth))
    assert (bad_partials[consistent & wrong] >= 1).all()  # each such negative has a wrong partial product


def test_bad_input_errors():
    with pytest.raises(ValueError, match="op"):
        ArithTask("div")
    with pytest.raises(ValueError, match="split"):
        ArithTask().sample_problems(3, "val", torch.Generator())
    with pytest.raises(ValueError, match="unknown token"):
        encode(["1", "x"])
