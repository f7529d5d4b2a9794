"""The detector's shape reader: a small MLP on a component's soft coverage map, trained on degraded
renders of random grammar scenes (never on the evaluation prompts).

**Descriptor.** For a component of palette colour k in an image with background colour b (the mean
of its background pixels), a pixel x has coverage c = <x - b, p_k - b> / |p_k - b|^2 clipped to
[0, 1] (its position on the mixing line of background and colour; 1 inside the object, 1/2 on a
blurred edge), set to 0 on pixels of other components. Blur moves coverage out of corners and tips
but keeps it near them, where a threshold at 1/2 drops it. The map is sampled bilinearly on a
``GRID`` x ``GRID`` grid over the component's box, centred, isotropic, half-width = half the box's
larger side + ``MARGIN`` px (blur tails), and joined with the 4 binary features of
``detector.shape_features`` and the box's width, height and sqrt(area) over that half-width:
``GRID**2 + 7`` numbers.

**Net.** Linear(GRID^2 + 7, HIDDEN) - ReLU - Linear(HIDDEN, HIDDEN) - ReLU - Linear(HIDDEN, 4),
cross-entropy on the shape of the drawn object the component covers.

**Training set** (:func:`training_set`): ``n_scenes`` scenes of the training caption distribution
(held-out combinations allowed, every colour), rendered and degraded by
``degrade.random_degradation`` (shift +-2 px, PIL blur sigma ~ U(0, 1.2), noise, JPEG q 75-90,
colour jitter; a quarter of them clean); each component that passes the detector's filters and
whose box holds exactly one drawn object of its colour is an example. Seeded end to end; the
weights file ``fixtures/shape_net.pt`` is what

    python -m core.tasks.shapes.shape_net

writes (about a CPU-minute on one thread).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.tasks.shapes.render import COLOR_ID, PALETTE_TENSOR, SHAPE_ID
from core.tasks.shapes.segment import BACKGROUND_RGB, Components

GRID, MARGIN, HIDDEN = 12, 2.0, 48
WEIGHTS_PATH = Path(__file__).with_name("fixtures") / "shape_net.pt"
TRAIN_SEED, TRAIN_SCENES, TRAIN_STEPS, TRAIN_MAX_SIGMA = 7, 12000, 3000, 1.2


def descriptors(images: torch.Tensor, comps: Components, feats: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(len(idx), GRID^2 + 7) descriptors of components ``idx`` (see the module docstring)."""
    b, _, h, w = images.shape
    bg_mask = (comps.classes == -1).unsqueeze(1).float()  # (B, 1, H, W)
    n_bg = bg_mask.sum((2, 3))
    bg = torch.where(n_bg > 0, (images * bg_mask).sum((2, 3)) / n_bg.clamp_min(1), torch.tensor(BACKGROUND_RGB))
    img = comps.image[idx]
    d = PALETTE_TENSOR[comps.color[idx]] - bg[img]  # (n, 3)
    x = images[img] - bg[img].view(-1, 3, 1, 1)
    cov = (x * d.view(-1, 3, 1, 1)).sum(1) / (d**2).sum(1).view(-1, 1, 1)  # (n, H, W)
    lab = comps.labels[img]
    own = (lab == 0) | (lab == (idx + 1).view(-1, 1, 1))
    cov = (cov * own).clamp(0, 1)
    box = comps.box[idx]
    centre = (box[:, :2] + box[:, 2:]) / 2  # (n, 2) x, y in pixel-edge coordinates
    size = box[:, 2:] - box[:, :2]
    half = size.amax(1) / 2 + MARGIN
    steps = torch.linspace(-1, 1, GRID)
    gx = centre[:, 0, None] + half[:, None] * steps  # (n, GRID)
    gy = centre[:, 1, None] + half[:, None] * steps
    grid = torch.stack(
        [(2 * gx / w - 1)[:, None, :].expand(-1, GRID, -1), (2 * gy / h - 1)[:, :, None].expand(-1, -1, GRID)], dim=-1
    )  # (n, GRID, GRID, 2) in grid_sample's [-1, 1] (align_corners=False: pixel edges)
    sampled = F.grid_sample(cov.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    extra = torch.stack([size[:, 0] / half, size[:, 1] / half, comps.area[idx].sqrt() / half], dim=1)
    return torch.cat([sampled.flatten(1), feats[idx], extra], dim=1)


class ShapeNet(nn.Module):
    def __init__(self, in_dim: int = GRID * GRID + 7, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, len(SHAPE_ID))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@lru_cache(maxsize=1)
def load_shape_net(path: str = str(WEIGHTS_PATH)) -> ShapeNet:
    """The trained reader (cached). A missing file names the command that writes it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"shape reader weights {path} not found; write them with `python -m core.tasks.shapes.shape_net`")
    net = ShapeNet()
    net.load_state_dict(torch.load(path, weights_only=True)["state"])
    return net.eval()


def label_components(comps: Components, scenes: list[dict], offsets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(len(idx),) shape of the one drawn object (of the component's colour) whose shifted centre lies
    in the component's box; -1 when none or several do."""
    out = torch.full((len(idx),), -1, dtype=torch.long)
    for j, c in enumerate(idx.tolist()):
        i = int(comps.image[c])
        x0, y0, x1, y1 = comps.box[c].tolist()
        hits = [
            o for o in scenes[i]["objects"]
            if COLOR_ID[o["color"]] == int(comps.color[c])
            and x0 <= o["cx"] + float(offsets[i, 0]) <= x1 and y0 <= o["cy"] + float(offsets[i, 1]) <= y1
        ]
        if len(hits) == 1:
            out[j] = SHAPE_ID[hits[0]["shape"]]
    return out


def training_set(n_scenes: int, seed: int, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(descriptors, shape labels) of components of degraded renders of random grammar scenes."""
    from core.tasks.shapes.degrade import random_degradation
    from core.tasks.shapes.detector import detect_components
    from core.tasks.shapes.prompts import sample_training_metadata
    from core.tasks.shapes.render import render_batch, sample_scene

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for start in range(0, n_scenes, batch):
        scenes = [sample_scene(sample_training_metadata(rng, allow_heldout=True), rng) for _ in range(min(batch, n_scenes - start))]
        images, offsets = random_degradation(render_batch(scenes), rng, max_sigma=TRAIN_MAX_SIGMA, p_clean=0.25)
        comps, feats, idx, _ = detect_components(images)
        labels = label_components(comps, scenes, offsets, idx)
        ok = labels >= 0
        xs.append(descriptors(images, comps, feats, idx[ok]))
        ys.append(labels[ok])
    return torch.cat(xs), torch.cat(ys)


def train_shape_net(
    n_scenes: int = TRAIN_SCENES, steps: int = TRAIN_STEPS, seed: int = TRAIN_SEED, batch_size: int = 256, lr: float = 3e-3
) -> ShapeNet:
    """Train the reader from scratch on one thread (deterministic for a given torch build)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = training_set(n_scenes, seed)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = ShapeNet()
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            pick = torch.randint(len(x), (batch_size,), generator=gen)
            loss = F.cross_entropy(net(x[pick]), y[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def save_shape_net(net: ShapeNet, path: str | Path = WEIGHTS_PATH) -> None:
    """Write the weights with how they were made: {"state", "torch", "seed", "scenes", "steps", "max_sigma"}."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    meta = {"torch": str(torch.__version__), "seed": TRAIN_SEED, "scenes": TRAIN_SCENES, "steps": TRAIN_STEPS}
    torch.save({"state": state, **meta, "max_sigma": TRAIN_MAX_SIGMA}, path)


def main() -> None:
    save_shape_net(train_shape_net())
    print(f"wrote {WEIGHTS_PATH} ({WEIGHTS_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
