"""Exactly checkable arithmetic for masked diffusion LMs (Prism's test bed at CPU scale).

A problem (a, b) with ``a_digits``-digit a and ``b_digits``-digit b is written as one token sequence

    mul:  a * b = p_0 , p_1 , ... , c         p_j = a * (j-th digit of b), c = a * b
    add:  a + b = c

where every number of the answer region is written least-significant digit first (the order in which
carries propagate) and zero-padded to a fixed width, so a layout is one fixed-length template:
prompt positions and separators are given, the answer *digit* slots are what the model generates.
The checker is exact: it parses c and compares with a*b (the scratchpad is the model's business).

Verification examples (self-verification, Prism's Self-Verified Feedback) append ``? [MASK]`` to a
completed sequence; the token at the slot is ``Y`` when the checker accepts the candidate, else ``N``.

Held-out split: a problem is a test problem iff hash(a, b) mod ``test_every`` == 0 (a fixed
multiplicative hash), so train and test never share a problem. A batch of problems is a (B, 2) long
tensor of (a, b); core.tasks.sudoku offers the same interface (sample_problems, targets, prompts, check,
answer_key, verify_inputs, verification_examples, labelled, vocab/mask_id/yes_id/no_id, n_steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VOCAB = [str(d) for d in range(10)] + ["*", "+", "=", ",", "?", "Y", "N", "[MASK]"]
TOK = {s: i for i, s in enumerate(VOCAB)}
MASK_ID = TOK["[MASK]"]
YES_ID, NO_ID = TOK["Y"], TOK["N"]
OPS = ("mul", "add")


def encode(text: list[str]) -> torch.Tensor:
    """List of token strings -> (L,) long."""
    try:
        return torch.tensor([TOK[s] for s in text], dtype=torch.long)
    except KeyError as e:
        raise ValueError(f"unknown token {e.args[0]!r}; vocabulary is {VOCAB}") from None


def decode(tokens: torch.Tensor) -> str:
    """(L,) long -> readable string ([MASK] shown as '_')."""
    return "".join("_" if int(t) == MASK_ID else VOCAB[int(t)] for t in tokens)


def _digits(n: torch.Tensor, width: int, reverse: bool) -> torch.Tensor:
    """n (B,) long -> (B, width) digit tokens, most significant first unless ``reverse``."""
    powers = 10 ** torch.arange(width - 1, -1, -1, device=n.device)
    d = (n.unsqueeze(1) // powers) % 10
    return d.flip(1) if reverse else d


@dataclass
class ArithTask:
    """Layout, generator and exact checker of one arithmetic task.

    Sequences: ``gen_len`` tokens for generation (prompt + answer region), ``verify_len`` = gen_len + 2
    for verification (``?`` and the verdict slot)."""

    op: str = "mul"
    a_digits: int = 3
    b_digits: int = 2
    test_every: int = 4

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"task op {self.op!r}: expected one of {OPS}")
        if self.a_digits < 1 or self.b_digits < 1:
            raise ValueError(f"a_digits/b_digits must be >= 1, got {self.a_digits}/{self.b_digits}")
        na, nb = self.a_digits, self.b_digits
        self.prompt_len = na + 1 + nb + 1
        if self.op == "mul":
            # partial products a * digit have na + 1 digits; the product has na + nb digits
            self.widths = [na + 1] * nb + [na + nb]
        else:
            self.widths = [max(na, nb) + 1]
        self.gen_len = self.prompt_len + sum(self.widths) + len(self.widths) - 1
        self.verify_len = self.gen_len + 2
        slots = torch.zeros(self.gen_len, dtype=torch.bool)
        pos = self.prompt_len
        for w in self.widths:
            slots[pos : pos + w] = True
            pos += w + 1
        self.answer_slots = slots  # (gen_len,) bool: the digit positions the model generates
        self.final_slice = slice(self.gen_len - self.widths[-1], self.gen_len)
        self.n_answer = int(slots.sum())
        # the interface the model, the trainer and the search share with core.tasks.sudoku
        self.vocab, self.mask_id, self.yes_id, self.no_id = VOCAB, MASK_ID, YES_ID, NO_ID
        self.n_steps = self.n_answer  # decoding steps: one revealed digit per step

    # ---------------------------------------------------------------- problems
    def _is_test(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = (a * 7919 + b * 104729 + 12345) * 2654435761 % (2**31)
        return (h // 7) % self.test_every == 0

    def sample_problems(self, n: int, split: str, generator: torch.Generator) -> torch.Tensor:
        """n problems (n, 2) = columns (a, b) from ``split`` in {train, test}; distinct within the draw
        when the split has at least n problems."""
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r}: expected train or test")
        lo_a, hi_a = 10 ** (self.a_digits - 1), 10**self.a_digits
        lo_b, hi_b = 10 ** (self.b_digits - 1), 10**self.b_digits
        a, b = [], []
        got = 0
        while got < n:
            m = max(4 * n, 1024)
            ca = torch.randint(lo_a, hi_a, (m,), generator=generator)
            cb = torch.randint(lo_b, hi_b, (m,), generator=generator)
            keep = self._is_test(ca, cb) == (split == "test")
            a.append(ca[keep])
            b.append(cb[keep])
            got += int(keep.sum())
        a, b = torch.cat(a), torch.cat(b)
        # distinct problems (first occurrence order kept) when possible: a test set without repeats
        key = a * hi_b + b
        _, inv = torch.unique(key, return_inverse=True)
        first = torch.full((int(inv.max()) + 1,), len(key), dtype=torch.long).scatter_reduce(
            0, inv, torch.arange(len(key)), "amin"
        )
        idx = first.sort().values
        if len(idx) < n:
            idx = torch.arange(n)
        return torch.stack([a[idx[:n]], b[idx[:n]]], 1)

    # ---------------------------------------------------------------- sequences
    def _numbers(self, p: torch.Tensor) -> list[torch.Tensor]:
        """The answer region's numbers [p_0, ..., p_{nb-1}, c] (mul) or [c] (add), each (B,)."""
        a, b = p[:, 0], p[:, 1]
        if self.op == "mul":
            return [a * ((b // 10**j) % 10) for j in range(self.b_digits)] + [a * b]
        return [a + b]

    def _sequence(self, p: torch.Tensor, numbers: list[torch.Tensor]) -> torch.Tensor:
        """Problems (B, 2) and answer-region numbers -> sequences (B, gen_len) (numbers mod 10^width)."""
        a, b = p[:, 0], p[:, 1]
        B = len(a)
        sym = TOK["*"] if self.op == "mul" else TOK["+"]
        parts = [_digits(a, self.a_digits, False), torch.full((B, 1), sym), _digits(b, self.b_digits, False),
                 torch.full((B, 1), TOK["="])]
        for j, (num, w) in enumerate(zip(numbers, self.widths)):
            if j:
                parts.append(torch.full((B, 1), TOK[","]))
            parts.append(_digits(num % 10**w, w, True))
        return torch.cat(parts, 1)

    def targets(self, p: torch.Tensor) -> torch.Tensor:
        """The correct full sequences (B, gen_len) of problems p (B, 2)."""
        _check_problems(p)
        return self._sequence(p, self._numbers(p))

    def prompts(self, p: torch.Tensor) -> torch.Tensor:
        """Templates (B, gen_len): the targets with every answer digit slot masked."""
        x = self.targets(p)
        return x.masked_fill(self.answer_slots, MASK_ID)

    def final_answer(self, x: torch.Tensor) -> torch.Tensor:
        """Parsed final answers (B,) long from sequences (B, >= gen_len); -1 where a slot is not a digit."""
        d = x[:, self.final_slice]
        ok = (d < 10).all(1)
        powers = 10 ** torch.arange(d.shape[1], device=x.device)  # least significant first
        val = (d.clamp(max=9) * powers).sum(1)
        return torch.where(ok, val, torch.full_like(val, -1))

    answer_key = final_answer  # the key votes compare (search methods' ``key_fn``)

    def check(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Exact checker (B,) bool: the final answer equals a*b (or a+b)."""
        truth = p[:, 0] * p[:, 1] if self.op == "mul" else p[:, 0] + p[:, 1]
        return self.final_answer(x) == truth.to(x.device)

    def verify_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Completed sequences (B, gen_len) -> verification queries (B, verify_len): x ? [MASK]."""
        B = x.shape[0]
        tail = torch.tensor([TOK["?"], MASK_ID], device=x.device).expand(B, 2)
        return torch.cat([x, tail], 1)

    def verification_examples(
        self, p: torch.Tensor, generator: torch.Generator, p_wrong: float = 0.5
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Labelled queries (B, verify_len) and verdict tokens (B,). With probability ``p_wrong`` an
        example is a near miss of one of two kinds, half each:

        * *inconsistent*: 1-2 final-answer digits of the target changed (and, half of the time, a
          scratchpad digit): the product disagrees with the scratchpad;
        * *consistent* (mul only): one digit of one partial product changed and the product recomputed
          as the sum of the (wrong) partial products -- the error a model makes when it multiplies
          wrongly but adds correctly, which only a check against the prompt can catch.

        Labels come from the checker, never from the corruption."""
        _check_problems(p)
        B = len(p)
        x = self.targets(p)
        wrong = torch.rand(B, generator=generator) < p_wrong
        consistent = wrong & (torch.rand(B, generator=generator) < 0.5) if self.op == "mul" else wrong & False
        rows = torch.arange(B)
        fin = torch.arange(self.gen_len)[self.final_slice]
        slots = self.answer_slots.nonzero().flatten()
        for k in range(2):
            pos = fin[torch.randint(len(fin), (B,), generator=generator)]
            val = torch.randint(10, (B,), generator=generator)
            first = torch.full((B,), k == 0) | (torch.rand(B, generator=generator) < 0.5)
            x[rows, pos] = torch.where(wrong & first, val, x[rows, pos])
            pos = slots[torch.randint(len(slots), (B,), generator=generator)]
            val = torch.randint(10, (B,), generator=generator)
            also = wrong & (torch.rand(B, generator=generator) < 0.5)
            x[rows, pos] = torch.where(also, val, x[rows, pos])
        if consistent.any():
            nums = self._numbers(p)[:-1]
            j = torch.randint(self.b_digits, (B,), generator=generator)
            place = 10 ** torch.randint(self.widths[0], (B,), generator=generator)
            delta = torch.randint(1, 10, (B,), generator=generator)
            parts = []
            for i, num in enumerate(nums):
                d = (num // place) % 10
                changed = num - d * place + ((d + delta) % 10) * place
                parts.append(torch.where(j == i, changed, num))
            total = sum(q * 10**i for i, q in enumerate(parts))
            x = torch.where(consistent.unsqueeze(1), self._sequence(p, parts + [total]), x)
        return self.labelled(x, p)

    def labelled(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Completed sequences (B, gen_len) -> (queries (B, verify_len), verdict tokens (B,) by the checker)."""
        ok = self.check(x, p)
        verdict = torch.where(ok, torch.full_like(ok, YES_ID, dtype=torch.long),
                              torch.full_like(ok, NO_ID, dtype=torch.long))
        return self.verify_inputs(x), verdict.to(x.device)


def _check_problems(p: torch.Tensor) -> None:
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"arithmetic problems must be a (B, 2) tensor of (a, b), got shape {tuple(p.shape)}")
