"""CIFAR-10 from a user path (torchvision's ``cifar-10-batches-py`` layout; nothing is downloaded).
Images are flattened (3*32*32) and scaled to [-1, 1], like datamodules.mnist, so the same modules
take either. Used by the ``scale=paper`` configs of the variational-learning experiments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.base import IndexedTensorDataset, TensorDataModule


def load_cifar10(root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train (50000, 3072), y_train, x_test (10000, 3072), y_test), x in [-1, 1]."""
    folder = Path(root) / "cifar-10-batches-py"
    if not folder.is_dir():
        raise FileNotFoundError(f"data.root: {folder} not found; expected torchvision's CIFAR-10 folder "
                                "(cifar-10-batches-py with data_batch_1..5 and test_batch)")
    from torchvision.datasets import CIFAR10

    try:
        train, test = CIFAR10(root, train=True, download=False), CIFAR10(root, train=False, download=False)
    except RuntimeError as err:
        raise FileNotFoundError(f"data.root: {folder} is incomplete or corrupt: {err}") from err

    def flat(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.asarray(ds.data, dtype=np.float32)).permute(0, 3, 1, 2).reshape(len(ds.data), -1)
        return x / 127.5 - 1.0, torch.as_tensor(ds.targets, dtype=torch.long)

    return (*flat(train), *flat(test))


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10 as flat vectors in [-1, 1]; ``n_train`` draws a fixed-seed subset (e.g. 5000 for
    full-batch edge-of-stability runs); ``n_val`` test images validate, the rest test."""

    def __init__(self, root: str = "data", n_train: int | None = None, n_val: int = 1000, batch_size: int = 128,
                 eval_batch_size: int = 1000, seed: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        self.root, self.n_train, self.n_val = root, n_train, n_val

    def build(self):
        xtr, ytr, xte, yte = load_cifar10(self.root)
        if self.n_train is not None:
            idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(self.seed))[: self.n_train]
            xtr, ytr = xtr[idx], ytr[idx]
        nv = min(self.n_val, len(xte) // 2)
        return (IndexedTensorDataset(xtr, y=ytr), IndexedTensorDataset(xte[:nv], y=yte[:nv]),
                IndexedTensorDataset(xte[nv:], y=yte[nv:]))
