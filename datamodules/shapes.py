"""Shapes-GenEval scenes with captions: procedurally rendered RGB images of 1-4 coloured shapes,
deterministic from a seed, for text-to-image training (core/tasks/shapes has the grammar, renderer and
evaluator).

Splits: the training scenes never contain a held-out combination (core.tasks.shapes.prompts:
HELDOUT_PAIRS / HELDOUT_COUNTS / HELDOUT_RELATIONS: no green circle is ever drawn, no four
diamonds, no triangle captioned above a circle); validation and test scenes come from the full
distribution and carry a ``heldout`` flag, so compositional generalisation can be measured.

Batches: {"x": (B, 3, H, W) in [-1, 1], "tokens": (B, max_len) long, "label": (B,) long (the first
object's shape x colour, for the in-suite feature net), "heldout": (B,) bool, "index": (B,)}.
"""

from __future__ import annotations

import numpy as np
import torch

from core.tasks.shapes.grammar import COLORS, SHAPES, Tokenizer
from core.tasks.shapes.prompts import HELDOUT_PAIRS, sample_training_metadata
from core.tasks.shapes.render import render_batch, sample_scene
from datamodules.base import IndexedTensorDataset, TensorDataModule

SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


def make_split(
    n: int, split: str, seed: int, size: int, p_color: float, tokenizer: Tokenizer, chunk: int = 2048
) -> tuple[IndexedTensorDataset, list[dict]]:
    """``n`` captioned scenes of one split: (dataset, list of their prompt metadata)."""
    if n < 1:
        raise ValueError(f"ShapesDataModule: n_{split} must be >= 1, got {n}")
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
    train = split == "train"
    metas = [sample_training_metadata(rng, p_color, allow_heldout=not train) for _ in range(n)]
    scenes = [sample_scene(m, rng, size, forbidden=HELDOUT_PAIRS if train else ()) for m in metas]
    images = torch.cat([render_batch(scenes[i : i + chunk]) for i in range(0, n, chunk)])
    first = [s["objects"][0] for s in scenes]
    label = torch.tensor([SHAPES.index(o["shape"]) * len(COLORS) + COLORS.index(o["color"]) for o in first])
    ds = IndexedTensorDataset(
        images * 2 - 1,
        tokens=tokenizer.encode([m["prompt"] for m in metas]),
        label=label,
        heldout=torch.tensor([bool(m["heldout"]) for m in metas]),
    )
    return ds, metas


class ShapesDataModule(TensorDataModule):
    """Captioned Shapes scenes. ``size``: image side (32 default; 64 for GPU); ``p_color``: how
    often captions name colours; ``n_*``: scenes per split (rendered once at setup)."""

    def __init__(
        self,
        size: int = 32,
        n_train: int = 20000,
        n_val: int = 512,
        n_test: int = 1024,
        p_color: float = 0.7,
        max_len: int = 12,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, num_workers)
        if size < 32 or size % 16:
            raise ValueError(
                f"ShapesDataModule: size must be a multiple of 16 and >= 32 "
                f"(shape features are unreliable below 32 px), got {size}"
            )
        self.size, self.p_color = size, p_color
        self.n = {"train": n_train, "val": n_val, "test": n_test}
        self.tokenizer = Tokenizer(max_len)
        self.metadata: dict[str, list[dict]] = {}

    def build(self):
        out = []
        for split in ("train", "val", "test"):
            ds, metas = make_split(self.n[split], split, self.seed, self.size, self.p_color, self.tokenizer)
            self.metadata[split] = metas
            out.append(ds)
        return tuple(out)

    def captions(self, split: str = "train") -> list[str]:
        self.setup()
        return [m["prompt"] for m in self.metadata[split]]
