"""K Dirac or Gaussian modes in d dimensions (docs/methods/ridge_phases.md; default: two Dirac modes at (+-3, 0)).

The modes live in a 2-D (or len(mean)-D) subspace of R^d: means are zero-padded to ``dim`` and,
with ``rotate=True``, turned by a random orthogonal matrix (seeded) so the subspace is generic.
Width 0 gives Dirac modes, whose training set is n copies of the means in proportion to the weights.
"""

from __future__ import annotations

import itertools
import math

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class _IndexedTensor(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "index": i}


class RidgeMixtureDataModule(L.LightningDataModule):
    """Batches are dicts {"x": (B, dim), "index": (B,)}; ``train_tensor()`` gives all n points."""

    def __init__(
        self,
        means: list[list[float]] | None = None,
        weights: list[float] | None = None,
        widths: list[float] | float = 0.0,
        dim: int = 2,
        n_train: int = 1000,
        rotate: bool = False,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        means = [[-3.0, 0.0], [3.0, 0.0]] if means is None else means
        k = len(means)
        if k < 1 or len({len(m) for m in means}) != 1:
            raise ValueError(f"data.means must be a non-empty list of equal-length points, got {means}")
        sub = len(means[0])
        if dim < sub:
            raise ValueError(f"data.dim = {dim} is smaller than the modes' dimension {sub}")
        weights = [1.0 / k] * k if weights is None else weights
        widths = [float(widths)] * k if isinstance(widths, (int, float)) else widths
        if len(weights) != k or len(widths) != k or min(weights) < 0 or min(widths) < 0:
            raise ValueError(
                f"data.weights and data.widths need {k} non-negative entries, got {weights}, {widths}"
            )
        self.dim, self.n_train, self.batch_size, self.seed = dim, n_train, batch_size, seed
        g = torch.Generator().manual_seed(seed)
        embed = torch.zeros(sub, dim)
        embed[:, :sub] = torch.eye(sub)
        if rotate:
            q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
            embed = embed @ q.T
        self.embedding = embed  # (sub, dim): rows span the modes' subspace
        self.modes = torch.tensor(means, dtype=torch.float32) @ embed  # (K, dim)
        self.weights = torch.tensor(weights, dtype=torch.float32) / sum(weights)
        self.widths = torch.tensor(widths, dtype=torch.float32)
        comp = torch.multinomial(self.weights, n_train, replacement=True, generator=g)
        comp = comp.sort().values
        noise = torch.randn(n_train, sub, generator=g) @ embed  # Gaussian modes spread within the subspace
        self._train = self.modes[comp] + self.widths[comp, None] * noise
        self.component = comp

    @property
    def mode_spacing(self) -> float:
        """Smallest distance between two modes (the unit of the offset thresholds)."""
        if len(self.modes) < 2:
            return 1.0
        return min(float((a - b).norm()) for a, b in itertools.combinations(self.modes, 2))

    @property
    def data_radius(self) -> float:
        """RMS distance of the training points to their mean."""
        x = self._train
        return math.sqrt(float((x - x.mean(0)).pow(2).sum(1).mean()))

    def train_tensor(self) -> torch.Tensor:
        return self._train.clone()

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(_IndexedTensor(self._train), batch_size=self.batch_size, shuffle=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_IndexedTensor(self._train[: self.batch_size]), batch_size=self.batch_size)
