"""Arithmetic task: layout, exact checker, held-out split, verification labels."""

import pytest
import torch

from core.arith_task import MASK_ID, NO_ID, TOK, YES_ID, ArithTask, decode, encode


def test_layout_of_a_known_product():
    task = ArithTask("mul", 3, 2)
    x = task.targets(torch.tensor([123]), torch.tensor([45]))
    # 123*5 = 615 -> 0615 reversed; 123*4 = 492 -> 0492 reversed; 5535 -> 05535 reversed
    assert decode(x[0]) == "123*45=5160,2940,53550"
    assert x.shape[1] == task.gen_len == 22 and task.n_answer == 13
    assert decode(task.prompts(torch.tensor([123]), torch.tensor([45]))[0]) == "123*45=____,____,_____"
    add = ArithTask("add", 2, 2)
    assert decode(add.targets(torch.tensor([99]), torch.tensor([18]))[0]) == "99+18=711"


def test_checker_is_exact():
    task = ArithTask("mul", 3, 2)
    g = torch.Generator().manual_seed(0)
    a, b = task.sample_problems(300, "test", g)
    x = task.targets(a, b)
    assert task.check(x, a, b).all()
    assert torch.equal(task.final_answer(x), a * b)
    y = x.clone()
    y[:, task.final_slice.start] = (y[:, task.final_slice.start] + 1) % 10  # ones digit changed
    assert not task.check(y, a, b).any()
    z = x.clone()
    z[:, -1] = MASK_ID
    assert not task.check(z, a, b).any()
    # a wrong scratchpad with the right product is still right: only the answer is checked
    s = x.clone()
    s[:, task.prompt_len] = (s[:, task.prompt_len] + 3) % 10
    assert task.check(s, a, b).all()


def test_splits_are_disjoint_and_distinct():
    task = ArithTask("mul", 2, 2)
    g = torch.Generator().manual_seed(1)
    a, b = task.sample_problems(1000, "test", g)
    assert len(set(zip(a.tolist(), b.tolist()))) == 1000
    assert ((a >= 10) & (a < 100) & (b >= 10) & (b < 100)).all()
    tr = set(zip(*[t.tolist() for t in task.sample_problems(3000, "train", g)]))
    assert not tr & set(zip(a.tolist(), b.tolist()))


def test_verification_examples_are_labelled_by_the_checker():
    task = ArithTask("mul", 3, 2)
    g = torch.Generator().manual_seed(2)
    a, b = task.sample_problems(500, "train", g)
    q, v = task.verification_examples(a, b, g)
    assert q.shape == (500, task.verify_len)
    assert (q[:, -2] == TOK["?"]).all() and (q[:, -1] == MASK_ID).all()
    ok = task.check(q[:, : task.gen_len], a, b)
    assert torch.equal(v == YES_ID, ok) and torch.equal(v == NO_ID, ~ok)
    assert 0.3 < ok.float().mean() < 0.7


def test_bad_input_errors():
    with pytest.raises(ValueError, match="op"):
        ArithTask("div")
    with pytest.raises(ValueError, match="split"):
        ArithTask().sample_problems(3, "val", torch.Generator())
    with pytest.raises(ValueError, match="unknown token"):
        encode(["1", "x"])
