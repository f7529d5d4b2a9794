"""Shared pieces of the suite's datamodules: indexed tensor datasets and seeded loaders."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate


class IndexedTensorDataset(Dataset):
    """Rows of tensors as dicts ``{"x": x[i], "index": i, **extras}``; ``index`` is the global
    example index used to key per-example noise (core.utils.noise)."""

    def __init__(self, x: torch.Tensor, **extras: torch.Tensor) -> None:
        for name, t in extras.items():
            if len(t) != len(x):
                raise ValueError(f"extra tensor {name!r} has {len(t)} rows, expected {len(x)}")
        self.x, self.extras = x, extras

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        item = {"x": self.x[i], "index": torch.tensor(i, dtype=torch.long)}
        item.update({k: v[i] for k, v in self.extras.items()})
        return item

    def __getitems__(self, indices: list[int]) -> RowBatch:
        """A whole batch by one tensor index per field (DataLoader calls this instead of B
        ``__getitem__`` calls); :func:`collate_rows` passes it through unchanged."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return RowBatch({"x": self.x[idx], "index": idx, **{k: v[idx] for k, v in self.extras.items()}})


class RowBatch(Sequence):
    """A batch already gathered as one dict of tensors, that still reads as a sequence of row dicts,
    so a DataLoader with torch's default collate gets the same batch (row by row) as with
    :func:`collate_rows`, which skips the per-row work (~5 ms per step on a small CPU model)."""

    def __init__(self, batched: dict[str, torch.Tensor]) -> None:
        self.batched = batched

    def __len__(self) -> int:
        return len(self.batched["index"])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return {k: v[i] for k, v in self.batched.items()}


def collate_rows(data):
    """DataLoader collate: a :class:`RowBatch` as is, anything else by torch's default collate."""
    return data.batched if isinstance(data, RowBatch) else default_collate(data)


class GlobalBatchSampler(Sampler[list[int]]):
    """Seeded shuffling by global batches, the same on every world size.

    Epoch e's order is ``randperm(n)`` from a generator seeded with (seed, e); global batch s is
    positions [s B, (s+1) B) of it, and rank r of W takes the r-th contiguous B/W slice. One process
    with batch B and W processes with B/W each therefore see the same global batches, so the loss
    averaged over ranks equals the single-process loss. ``skip`` batches are left out at the start
    of the next epoch iterated (mid-epoch resume).
    """

    def __init__(self, n: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if global_batch % world_size:
            raise ValueError(f"data.batch_size={global_batch} (the global batch) does not divide across "
                             f"{world_size} processes; choose a multiple of {world_size}")
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full = self.n // self.global_batch
        return full if self.drop_last or self.n % self.global_batch == 0 else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1  # counts epochs itself; set_epoch() agrees with it
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        local = self.global_batch // self.world
        start, self.skip = self.skip, 0
        for s in range(start, len(self)):
            batch = order[s * self.global_batch : (s + 1) * self.global_batch]
            yield batch[self.rank * local : (self.rank + 1) * local] if len(batch) == self.global_batch else (
                batch[self.rank :: self.world])


class ResumableLoader(DataLoader):
    """A DataLoader whose position survives a checkpoint: its state is (epoch, batches of this epoch
    already trained on), read from the trainer's progress, and a restored loader skips them."""

    def __init__(self, *args, progress: Callable[[], tuple[int, int]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        epoch, done = self.progress() if self.progress else (0, 0)
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.set_epoch(state["epoch"])
        self.batch_sampler.skip = int(state["batches_done"]) % max(len(self.batch_sampler), 1)


def trainer_progress(trainer: L.Trainer) -> tuple[int, int]:
    """(epoch, training batches of the current epoch already processed)."""
    loop = trainer.fit_loop.epoch_loop
    return trainer.current_epoch, int(loop.batch_progress.current.processed)


class TensorDataModule(L.LightningDataModule):
    """A datamodule over in-memory tensors: subclasses implement :meth:`build` returning
    ``(train, val, test)`` IndexedTensorDatasets. ``seed`` fixes the data (draws, splits);
    ``shuffle_seed`` the training order, identical on every rank."""

    def __init__(self, batch_size: int = 256, eval_batch_size: int = 1024, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size, self.eval_batch_size, self.seed, self.num_workers = (
            batch_size, eval_batch_size, seed, num_workers)
        self.train_set = self.val_set = self.test_set = None
        self.shuffle_seed = seed  # run.py sets it to the run's seed

    def build(self) -> tuple[IndexedTensorDataset, IndexedTensorDataset, IndexedTensorDataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build()

    def train_tensor(self) -> torch.Tensor:
        """All training examples as one tensor (nearest-neighbour and ridge computations)."""
        self.setup()
        return self.train_set.x

    def _loader(self, ds: Dataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=False, collate_fn=collate_rows,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Global batches of ``batch_size`` split across ranks (see :class:`GlobalBatchSampler`)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = GlobalBatchSampler(len(self.train_set), min(self.batch_size, len(self.train_set)),
                                     self.shuffle_seed, rank, world)
        return ResumableLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers,
                               collate_fn=collate_rows, persistent_workers=self.num_workers > 0,
                               progress=(lambda: trainer_progress(trainer)) if trainer is not None else None)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)
