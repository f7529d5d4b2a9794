"""``GridWorldDataModule``: out-and-back trajectories on random coloured maps (core/tasks/gridworld.py).

Every example is one trajectory on its own map: ``x`` = views (T+1, v*v) long, plus poses, actions,
revealed-tile masks, tile ages and the memory retrieval indices (core/world_model/memory_bank.py), which depend
on poses only. Train / val / test trajectories live on disjoint maps."""

from __future__ import annotations

import torch

from core.tasks.gridworld import make_trajectory, random_map
from core.world_model.memory_bank import retrieval_indices
from datamodules.base import IndexedTensorDataset, TensorDataModule


class GridWorldDataModule(TensorDataModule):
    def __init__(self, height: int = 16, width: int = 16, colours: int = 8, view: int = 5, steps_out: int = 12,
                 context: int = 2, memory_slots: int = 2, p_stay: float = 0.1, n_train: int = 2000,
                 n_val: int = 64, n_test: int = 128, batch_size: int = 16, eval_batch_size: int = 64,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, seed, num_workers)
        if view % 2 == 0 or view < 3:
            raise ValueError(f"data.view={view}: the egocentric view must be odd and >= 3")
        if min(height, width) < view + 2:
            raise ValueError(f"data.height/width ({height}x{width}) must exceed the view ({view}) by 2")
        self.height, self.width, self.colours, self.view = height, width, colours, view
        self.steps_out, self.context, self.memory_slots, self.p_stay = steps_out, context, memory_slots, p_stay
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test

    def _make(self, n: int, seed: int) -> IndexedTensorDataset:
        gen = torch.Generator().manual_seed(seed)
        trajs, maps = [], []
        for _ in range(n):
            world = random_map(self.height, self.width, self.colours, gen)
            trajs.append(make_trajectory(world, self.steps_out, self.view, gen, self.p_stay))
            maps.append(world)
        cat = {k: torch.stack([tr[k] for tr in trajs]) for k in trajs[0]}
        mem = torch.stack([retrieval_indices(p, self.view, self.memory_slots, self.context)
                           for p in cat["poses"]])
        return IndexedTensorDataset(cat["views"], poses=cat["poses"], actions=cat["actions"],
                                    revealed=cat["revealed"], ages=cat["ages"], memory=mem,
                                    world=torch.stack(maps))

    def build(self):
        s = self.seed * 1000
        return self._make(self.n_train, s + 1), self._make(self.n_val, s + 2), self._make(self.n_test, s + 3)
