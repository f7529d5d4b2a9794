"""Shared pieces of the suite's datamodules: indexed tensor datasets and seeded loaders."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class IndexedTensorDataset(Dataset):
    """Rows of tensors as dicts ``{"x": x[i], "index": i, **extras}``; ``index`` is the global
    example index used to key per-example noise (core.noise)."""

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


class TensorDataModule(L.LightningDataModule):
    """A datamodule over in-memory tensors: subclasses implement :meth:`build` returning
    ``(train, val, test)`` IndexedTensorDatasets. The training shuffle is seeded by ``seed`` so it is
    the same permutation on every rank (Lightning's DistributedSampler then splits it)."""

    def __init__(self, batch_size: int = 256, eval_batch_size: int = 1024, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size, self.eval_batch_size, self.seed, self.num_workers = (
            batch_size, eval_batch_size, seed, num_workers)
        self.train_set = self.val_set = self.test_set = None

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
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=shuffle, generator=gen,
                          drop_last=shuffle and len(ds) > batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)
