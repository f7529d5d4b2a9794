"""4x4 Sudoku for masked diffusion LMs (Prism's second test bed): puzzles with a unique solution, an exact
checker, and yes/no verification examples.

A grid is 16 cells in row-major order, digits 1-4 (tokens "1".."4"); rows, columns and the four 2x2
boxes each hold every digit once. All 288 valid grids are enumerated by brute force (row permutations
added one at a time, pruned by the column and box rules). A puzzle is (grid id, blank mask):
``n_blanks`` cells are blanked, and the puzzle is kept only when exactly one of the 288 grids agrees
with its givens (uniqueness by brute force), so the checker "the completion is a valid grid that keeps
the givens" accepts exactly the solution.

Sequences: generation = the 16 cells with blanks as [MASK] (in-place infilling: the answer slots are the
blanks, ``n_steps`` = n_blanks decoding steps); verification = the completed grid + ``? [MASK]``,
verdict ``Y``/``N`` at the slot. A batch of problems is a (B, 2) long tensor (grid id, mask bits: bit i
set = cell i blank). Held-out split: hash(grid id, mask) mod ``test_every`` == 0 is a test puzzle. Same
interface as core.tasks.arith.ArithTask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch

VOCAB = ["1", "2", "3", "4", "?", "Y", "N", "[MASK]"]
TOK = {s: i for i, s in enumerate(VOCAB)}
MASK_ID = TOK["[MASK]"]
YES_ID, NO_ID = TOK["Y"], TOK["N"]
N_CELLS = 16
# the 12 groups (4 rows, 4 columns, 4 boxes) of cell indices that must each hold 1-4 once
GROUPS = torch.tensor(
    [[4 * r + c for c in range(4)] for r in range(4)]
    + [[4 * r + c for r in range(4)] for c in range(4)]
    + [[4 * (2 * br + r) + 2 * bc + c for r in range(2) for c in range(2)] for br in range(2) for bc in range(2)]
)


def is_valid_grid(cells: torch.Tensor) -> torch.Tensor:
    """cells (B, 16) tokens -> (B,) bool: every cell a digit token and every group a permutation of 1-4."""
    digit = (cells >= 0) & (cells < 4)
    g = cells.clamp(0, 3)[:, GROUPS]  # (B, 12, 4)
    counts = torch.nn.functional.one_hot(g, 4).sum(2)  # (B, 12, 4)
    return digit.all(1) & (counts == 1).all(-1).all(-1)


@lru_cache(maxsize=1)
def all_grids() -> torch.Tensor:
    """All valid 4x4 Sudoku grids (288, 16) as tokens 0-3, by brute force: rows are permutations of
    1-4, added one at a time and kept when no column (and, after rows 2 and 4, no box) repeats a digit."""
    perms = torch.tensor(list(itertools.permutations(range(4))))  # (24, 4)
    grids = perms.unsqueeze(1)  # (n, rows so far, 4)
    for r in range(1, 4):
        n = len(grids)
        cand = torch.cat([grids.repeat_interleave(24, 0), perms.repeat(n, 1).unsqueeze(1)], 1)
        ok = (cand[:, :r] != cand[:, r : r + 1]).all(1).all(1)  # the new row repeats no column digit
        if r % 2 == 1:  # rows r-1 and r complete two boxes: each must hold four distinct digits
            left = torch.cat([cand[:, r - 1, :2], cand[:, r, :2]], 1).sort(1).values
            right = torch.cat([cand[:, r - 1, 2:], cand[:, r, 2:]], 1).sort(1).values
            ok &= (left == torch.arange(4)).all(1) & (right == torch.arange(4)).all(1)
        grids = cand[ok]
    return grids.reshape(-1, N_CELLS).contiguous()


def encode(text: str) -> torch.Tensor:
    """'12..'-style string of 16 cells ('.' or '_' = blank) -> (16,) tokens."""
    if len(text) != N_CELLS:
        raise ValueError(f"a 4x4 Sudoku needs 16 cells, got {len(text)} in {text!r}")
    try:
        return torch.tensor([MASK_ID if c in "._" else TOK[c] for c in text], dtype=torch.long)
    except KeyError as e:
        raise ValueError(f"unknown cell {e.args[0]!r}; cells are 1-4 or '.'") from None


def decode(tokens: torch.Tensor) -> str:
    """(L,) tokens -> string, [MASK] shown as '_'."""
    return "".join("_" if int(t) == MASK_ID else VOCAB[int(t)] for t in tokens)


def count_solutions(puzzle: torch.Tensor) -> torch.Tensor:
    """puzzle (B, 16) tokens with blanks = [MASK] -> (B,) number of valid grids that keep the givens."""
    given = puzzle != MASK_ID
    agree = (all_grids().unsqueeze(0) == puzzle.unsqueeze(1)) | ~given.unsqueeze(1)  # (B, 288, 16)
    return agree.all(-1).sum(1)


def _bits_to_mask(bits: torch.Tensor) -> torch.Tensor:
    """(B,) ints -> (B, 16) bool, cell i blank iff bit i set."""
    return (bits.unsqueeze(1) >> torch.arange(N_CELLS)) & 1 == 1


@dataclass
class SudokuTask:
    """Layout, generator and exact checker of 4x4 Sudoku with ``n_blanks`` blanks (the difficulty)."""

    n_blanks: int = 10
    test_every: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.n_blanks <= 12:
            raise ValueError(f"n_blanks must be in 1..12 (a 4x4 puzzle needs >= 4 givens), got {self.n_blanks}")
        if self.test_every < 2:
            raise ValueError(f"test_every must be >= 2 (a train and a test split), got {self.test_every}")
        self.gen_len, self.verify_len = N_CELLS, N_CELLS + 2
        self.vocab, self.mask_id, self.yes_id, self.no_id = VOCAB, MASK_ID, YES_ID, NO_ID
        self.n_steps = self.n_blanks  # one revealed cell per step
        # (verify_len, 3) group ids of each position: row 0-3, column 4-7, box 8-11; 12 = not a cell
        rows = [[c // 4, 4 + c % 4, 8 + 2 * (c // 8) + (c % 4) // 2] for c in range(N_CELLS)]
        self.position_groups = rows + [[12, 12, 12]] * 2

    def _is_test(self, grid: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        h = (grid * 7919 + bits * 104729 + 12345) * 2654435761 % (2**31)
        return (h // 7) % self.test_every == 0

    def sample_problems(self, n: int, split: str, generator: torch.Generator) -> torch.Tensor:
        """n unique-solution puzzles (n, 2) = (grid id, blank bits) from ``split``; distinct within a draw."""
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r}: expected train or test")
        grids = all_grids()
        out, seen, got = [], set(), 0
        while got < n:
            m = max(4 * n, 512)
            gid = torch.randint(len(grids), (m,), generator=generator)
            order = torch.rand(m, N_CELLS, generator=generator).argsort(1)[:, : self.n_blanks]
            blank = torch.zeros(m, N_CELLS, dtype=torch.long).scatter_(1, order, 1)
            bits = (blank << torch.arange(N_CELLS)).sum(1)
            keep = self._is_test(gid, bits) == (split == "test")
            gid, bits = gid[keep], bits[keep]
            puzzle = grids[gid].masked_fill(_bits_to_mask(bits), MASK_ID)
            unique = count_solutions(puzzle) == 1
            for g_, b_ in zip(gid[unique].tolist(), bits[unique].tolist()):
                if (g_, b_) not in seen and got < n:
                    seen.add((g_, b_))
                    out.append((g_, b_))
                    got += 1
        return torch.tensor(out, dtype=torch.long).reshape(n, 2)

    def targets(self, p: torch.Tensor) -> torch.Tensor:
        """The solutions (B, 16)."""
        _check_problems(p)
        return all_grids()[p[:, 0]].clone()

    def prompts(self, p: torch.Tensor) -> torch.Tensor:
        """Puzzles (B, 16): solutions with the blanks masked."""
        return self.targets(p).masked_fill(_bits_to_mask(p[:, 1]), MASK_ID)

    def check(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Exact checker (B,) bool: a valid grid that keeps every given (by uniqueness: the solution)."""
        cells = x[:, :N_CELLS]
        given = ~_bits_to_mask(p[:, 1]).to(x.device)
        keeps = ((cells == self.targets(p).to(x.device)) | ~given).all(1)
        return is_valid_grid(cells) & keeps

    def answer_key(self, x: torch.Tensor) -> torch.Tensor:
        """(B, >= 16) -> (B,) long: the grid as a base-4 number (votes compare it); -1 if a cell is not a digit."""
        cells = x[:, :N_CELLS]
        ok = (cells < 4).all(1)
        val = (cells.clamp(max=3) * 4 ** torch.arange(N_CELLS, device=x.device)).sum(1)
        return torch.where(ok, val, torch.full_like(val, -1))

    def verify_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Completed grids (B, 16) -> verification queries (B, 18): x ? [MASK]."""
        tail = torch.tensor([TOK["?"], MASK_ID], device=x.device).expand(x.shape[0], 2)
        return torch.cat([x[:, :N_CELLS], tail], 1)

    def verification_examples(
        self, p: torch.Tensor, generator: torch.Generator, p_wrong: float = 0.5
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Labelled queries (B, 18), verdicts (B,). With probability ``p_wrong`` a near miss: half of
        them swap the values of two blank cells (digit counts kept), half rewrite 1-2 blank cells at
        random. Labels come from the checker (a swap of equal values stays right)."""
        x = self.targets(p)
        B = len(p)
        blank = _bits_to_mask(p[:, 1])
        wrong = torch.rand(B, generator=generator) < p_wrong
        swap = torch.rand(B, generator=generator) < 0.5
        # two distinct random blank cells per row
        r = torch.rand(B, N_CELLS, generator=generator).masked_fill(~blank, 2.0)
        two = r.argsort(1)[:, :2]
        rows = torch.arange(B)
        i, j = two[:, 0], two[:, 1]
        xi, xj = x[rows, i].clone(), x[rows, j].clone()
        sw = wrong & swap
        x[rows, i] = torch.where(sw, xj, xi)
        x[rows, j] = torch.where(sw, xi, xj)
        rw = wrong & ~swap
        x[rows, i] = torch.where(rw, (xi + torch.randint(1, 4, (B,), generator=generator)) % 4, x[rows, i])
        second = rw & (torch.rand(B, generator=generator) < 0.5)
        x[rows, j] = torch.where(second, torch.randint(4, (B,), generator=generator), x[rows, j])
        return self.labelled(x, p)

    def labelled(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Completed grids (B, 16) -> (queries (B, 18), verdict tokens (B,) by the checker)."""
        ok = self.check(x, p)
        verdict = torch.where(ok, torch.full(ok.shape, YES_ID, device=x.device),
                              torch.full(ok.shape, NO_ID, device=x.device))
        return self.verify_inputs(x), verdict


def _check_problems(p: torch.Tensor) -> None:
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"Sudoku problems must be a (B, 2) tensor of (grid id, blank bits), got {tuple(p.shape)}")
    if bool(((p[:, 0] < 0) | (p[:, 0] >= len(all_grids()))).any()):
        raise ValueError(f"grid ids must be in [0, {len(all_grids())})")
