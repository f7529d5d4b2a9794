"""4x4 Sudoku: the grid enumeration, uniqueness by brute force, the exact checker, splits, verification
labels; and the search methods on Sudoku with an oracle model (decoding steps and NFE exact)."""

import itertools

import pytest
import torch

from core.diffusion.masked import confidence_decode
from core.utils.nfe import EvalCounter
from core.search.prism import PrismConfig, SelfVerifier, expected_prism_nfe, prism
from core.tasks.sudoku import (
    MASK_ID,
    NO_ID,
    TOK,
    YES_ID,
    SudokuTask,
    all_grids,
    count_solutions,
    decode,
    encode,
    is_valid_grid,
)


def _valid_by_rules(cells: list[int]) -> bool:
    """Plain-python Sudoku rules on 16 cells (values 0-3)."""
    g = [cells[4 * r : 4 * r + 4] for r in range(4)]
    groups = g + [[g[r][c] for r in range(4)] for c in range(4)]
    groups += [[g[2 * br + r][2 * bc + c] for r in range(2) for c in range(2)] for br in range(2) for bc in range(2)]
    return all(sorted(x) == [0, 1, 2, 3] for x in groups)


def test_there_are_288_grids_and_all_are_valid():
    grids = all_grids()
    assert grids.shape == (288, 16)  # the known count of 4x4 Sudoku grids
    assert len({tuple(r) for r in grids.tolist()}) == 288
    assert all(_valid_by_rules(r) for r in grids.tolist())


def test_is_valid_grid_agrees_with_the_rules_on_random_and_near_grids():
    g = torch.Generator().manual_seed(0)
    rnd = torch.randint(0, 4, (300, 16), generator=g)
    near = all_grids()[:100].clone()
    near[torch.arange(100), torch.randint(16, (100,), generator=g)] = torch.randint(0, 4, (100,), generator=g)
    x = torch.cat([rnd, near, all_grids()[:50]])
    assert is_valid_grid(x).tolist() == [_valid_by_rules(r) for r in x.tolist()]


def test_uniqueness_by_brute_force_on_small_cases():
    """count_solutions equals a brute-force count over all 4^k fillings of the k blanks."""
    g = torch.Generator().manual_seed(1)
    for k in (2, 4, 6):
        for _ in range(3):
            grid = all_grids()[torch.randint(288, (1,), generator=g)][0]
            blanks = torch.randperm(16, generator=g)[:k]
            puzzle = grid.clone()
            puzzle[blanks] = MASK_ID
            brute = 0
            for fill in itertools.product(range(4), repeat=k):
                cand = puzzle.clone()
                cand[blanks] = torch.tensor(fill)
                brute += _valid_by_rules(cand.tolist())
            assert int(count_solutions(puzzle.unsqueeze(0))) == brute >= 1


def test_sampled_puzzles_are_unique_distinct_and_split():
    task = SudokuTask(11)
    g = torch.Generator().manual_seed(2)
    test = task.sample_problems(300, "test", g)
    train = task.sample_problems(600, "train", g)
    pz = task.prompts(test)
    assert ((pz == MASK_ID).sum(1) == 11).all()
    assert (count_solutions(pz) == 1).all()
    assert len({tuple(r) for r in test.tolist()}) == 300
    assert not {tuple(r) for r in test.tolist()} & {tuple(r) for r in train.tolist()}
    assert (task.prompts(test) == MASK_ID).eq(pz == MASK_ID).all()


def test_checker_is_exact():
    task = SudokuTask(10)
    g = torch.Generator().manual_seed(3)
    p = task.sample_problems(200, "test", g)
    x = task.targets(p)
    assert task.check(x, p).all()
    # any single changed blank cell breaks it, and so does a changed given even in a valid grid
    blank = task.prompts(p) == MASK_ID
    pos = blank.float().multinomial(1, generator=g).squeeze(1)
    y = x.clone()
    y[torch.arange(200), pos] = (y[torch.arange(200), pos] + 1) % 4
    assert not task.check(y, p).any()
    other = all_grids()[(p[:, 0] + 1) % 288]  # a valid grid, but not this puzzle's
    assert not task.check(other, p).any()
    z = x.clone()
    z[:, 0] = MASK_ID
    assert not task.check(z, p).any()
    assert (task.answer_key(x) >= 0).all() and (task.answer_key(z) == -1).all()
    assert len(set(task.answer_key(all_grids()).tolist())) == 288


def test_verification_examples_are_labelled_by_the_checker():
    task = SudokuTask(10)
    g = torch.Generator().manual_seed(4)
    p = task.sample_problems(1000, "train", g)
    q, v = task.verification_examples(p, g)
    assert q.shape == (1000, task.verify_len)
    assert (q[:, -2] == TOK["?"]).all() and (q[:, -1] == MASK_ID).all()
    ok = task.check(q[:, :16], p)
    assert torch.equal(v == YES_ID, ok) and torch.equal(v == NO_ID, ~ok)
    assert 0.4 < ok.float().mean() < 0.65
    assert ((q[:, :16] != task.prompts(p)) & (task.prompts(p) != MASK_ID)).sum() == 0  # givens kept


def test_encode_decode_and_errors():
    assert decode(encode("12.4" * 4)) == "12_4" * 4
    with pytest.raises(ValueError, match="16 cells"):
        encode("123")
    with pytest.raises(ValueError, match="unknown cell"):
        encode("5" * 16)
    with pytest.raises(ValueError, match="n_blanks"):
        SudokuTask(13)
    with pytest.raises(ValueError, match="split"):
        SudokuTask().sample_problems(2, "val", torch.Generator())
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        SudokuTask().targets(torch.zeros(3, dtype=torch.long))


TASK = SudokuTask(9)


def oracle_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Predicts the unique solution's cells (found by brute force from the givens) and, at a
    verification slot, Y iff the grid is a valid completion."""
    cells = x[:, :16]
    grids = all_grids()
    sol = []
    for row in cells:
        agree = ((grids == row) | (row == MASK_ID)).all(1)
        sol.append(grids[agree][0] if agree.any() else row.clamp(max=3))
    sol = torch.stack(sol)
    logits = torch.full((*x.shape, len(TASK.vocab)), -10.0)
    logits[:, :16].scatter_(2, sol.unsqueeze(-1), 10.0)
    if x.shape[1] == TASK.verify_len:
        ok = is_valid_grid(cells)
        logits[:, -1, YES_ID] = torch.where(ok, 10.0, -10.0)
        logits[:, -1, NO_ID] = torch.where(ok, -10.0, 10.0)
    return logits


def test_oracle_decodes_sudoku_one_cell_per_step_and_prism_counts_exactly():
    p = TASK.sample_problems(5, "test", torch.Generator().manual_seed(5))
    c = EvalCounter()
    res = confidence_decode(oracle_model, TASK.prompts(p), TASK.n_steps, MASK_ID, temperature=0.7,
                            generator=torch.Generator().manual_seed(0), counter=c, return_trajectory=True)
    assert TASK.check(res.x, p).all() and c.items == 5 * TASK.n_steps
    for i, xi in enumerate(res.trajectory):
        assert ((xi == MASK_ID).sum(1) == TASK.n_blanks - i).all()
    ver = SelfVerifier(oracle_model, TASK.verify_inputs, MASK_ID, YES_ID, NO_ID)
    cfg = PrismConfig(n_initial=8, window=(0.05, 0.6))
    c = EvalCounter()
    ans, _ = prism(oracle_model, TASK.prompts(p), TASK.n_steps, MASK_ID, TASK.answer_key, cfg, ver,
                   generator=torch.Generator().manual_seed(0), counter=c)
    assert TASK.check(ans, p).all() and c.items == 5 * expected_prism_nfe(cfg, TASK.n_steps)
