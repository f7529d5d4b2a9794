"""sklearn's 8x8 handwritten digits (1797 real images, bundled with scikit-learn: no download), flat
(N, 64) in [-1, 1] with labels; ``source=mnist`` uses the suite's MNIST loader (28x28 or pooled)."""

from __future__ import annotations

import numpy as np
import torch

from datamodules.base import IndexedTensorDataset, TensorDataModule


def load_digits_split(n_test: int = 297, split_seed: int = 0):
    """(x_train, y_train, x_test, y_test): x (N, 64) float32 in [-1, 1] (pixel values 0..16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.default_rng(split_seed).permutation(len(d.data))
    x = torch.from_numpy(d.data[perm] / 8.0 - 1.0).float()
    y = torch.from_numpy(d.target[perm]).long()
    if not 0 < n_test < len(x):
        raise ValueError(f"data.n_test: expected 0 < n_test < {len(x)}, got {n_test}")
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


class DigitsDataModule(TensorDataModule):
    """Flat digit images with labels (``y``); ``side`` is 8 for sklearn, 28/14/7 for ``source=mnist``.
    The validation set is the first ``n_val`` test images (used to pick samplers), test is all."""

    def __init__(self, source: str = "sklearn", side: int = 28, n_test: int = 297, n_val: int = 150,
                 mnist_root: str | None = None, batch_size: int = 256, eval_batch_size: int = 2000,
                 seed: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        if source not in ("sklearn", "mnist"):
            raise ValueError(f"data.source: expected sklearn or mnist, got {source!r}")
        self.source, self.side, self.n_test, self.n_val, self.root = source, side, n_test, n_val, mnist_root

    @property
    def image_side(self) -> int:
        return 8 if self.source == "sklearn" else self.side

    def build(self):
        if self.source == "sklearn":
            xtr, ytr, xte, yte = load_digits_split(self.n_test, self.seed)
        else:
            from datamodules.mnist import downsample, load_mnist

            xtr, ytr, xte, yte = load_mnist(self.root, self.seed)
            if self.side != 28:
                xtr, xte = downsample(xtr, self.side), downsample(xte, self.side)
        val = IndexedTensorDataset(xte[: self.n_val], y=yte[: self.n_val])
        return IndexedTensorDataset(xtr, y=ytr), val, IndexedTensorDataset(xte, y=yte)
