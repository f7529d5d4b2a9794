"""Problems of an exactly checkable task (arithmetic with a scratchpad, 4x4 Sudoku) as datasets.

Rows are problems as the task encodes them ((a, b) or (grid id, blank bits)); the module builds token
sequences, targets and verification examples from them. Train and validation problems come from the task's
train split, test problems from its held-out split (the task's hash decides; the two never share a problem).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from core.tasks.checkable import make_task
from datamodules.base import IndexedTensorDataset, TensorDataModule, collate_rows


class CheckableTaskDataModule(TensorDataModule):
    """``task``: a core.tasks.checkable spec, e.g. {name: arith, op: mul, a_digits: 3, b_digits: 1}.
    ``n_train`` problems are drawn (with repeats, the split may be small) from the train split with seed
    ``seed``, ``n_val`` more for validation, and ``n_test`` held-out problems with seed ``seed + 1``."""

    def __init__(self, task: dict, n_train: int = 100_000, n_val: int = 250, n_test: int = 2000,
                 batch_size: int = 128, eval_batch_size: int = 250, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, seed, num_workers)
        for key, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if v < 1:
                raise ValueError(f"data.{key} must be >= 1, got {v}")
        self.task = make_task(task, "data.task")
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test

    def build(self) -> tuple[IndexedTensorDataset, IndexedTensorDataset, IndexedTensorDataset]:
        g = torch.Generator().manual_seed(self.seed)
        train = self._draw_train(self.n_train, g)
        val = self.task.sample_problems(self.n_val, "train", g)
        test = self.task.sample_problems(self.n_test, "test", torch.Generator().manual_seed(self.seed + 1))
        return IndexedTensorDataset(train), IndexedTensorDataset(val), IndexedTensorDataset(test)

    def _draw_train(self, n: int, g: torch.Generator) -> torch.Tensor:
        """n train-split problems in chunks (a task's draw is distinct within one call; the split of a small
        task holds fewer than n distinct problems, so repeats across chunks are expected)."""
        chunk = 4096
        parts = [self.task.sample_problems(min(chunk, n - lo), "train", g) for lo in range(0, n, chunk)]
        return torch.cat(parts)

    def test_dataloader(self) -> DataLoader:
        """Held-out problems in chunks of ``eval_batch_size``; of W processes, rank r takes chunks r, r + W, ...
        The module seeds each chunk by its first index and gathers every rank's results, so the test metrics
        do not depend on the number of processes (tested with two gloo processes)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        n = len(self.test_set)
        b = min(self.eval_batch_size, n)
        chunks = [list(range(lo, min(lo + b, n))) for lo in range(0, n, b)]
        return DataLoader(self.test_set, batch_sampler=chunks[rank::world], collate_fn=collate_rows,
                          num_workers=self.num_workers)
