"""How well a detector reads degraded renders of known scenes: per-object shape and colour accuracy
and GenEval strict pass, per degradation at its worst setting (the table of
``benchmarks/evaluator.py``, the thresholds of ``tests/core/tasks/test_shapes_detector.py``).

Object accuracy: each drawn object (its centre moved by the image's shift) is matched to the
detection of its image whose box contains that centre, the nearest box centre if several; the
object counts as read right in shape (colour) when a match exists and has its shape (colour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.tasks.shapes.degrade import add_noise, jpeg, merged_by_blur, pil_blur, random_degradation, shift
from core.tasks.shapes.evaluator import Detections, evaluate
from core.tasks.shapes.render import COLOR_ID, SHAPE_ID, render_batch

# name -> (what it is, the worst setting the issue names)
WORST = {
    "clean": "no degradation",
    "blur": "PIL GaussianBlur radius 1",
    "jpeg": "JPEG quality 75",
    "shift": "whole-image shift of (+-2, +-2) px",
    "noise": "additive Gaussian noise, std 0.05",
    "mix": "random mix (degrade.random_degradation)",
}


def degrade_worst(name: str, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded images, (B, 2) integer shift (dx, dy) of each image) at the worst setting of ``name``."""
    b = len(images)
    offsets = torch.zeros(b, 2, dtype=torch.long)
    if name == "clean":
        return images, offsets
    if name == "blur":
        return pil_blur(images, 1.0), offsets
    if name == "jpeg":
        return jpeg(images, 75), offsets
    if name == "noise":
        return add_noise(images, 0.05, torch.Generator().manual_seed(seed)), offsets
    if name == "mix":  # every image: shift, blur sigma ~ U(0, 1), maybe noise, maybe JPEG q75-90, maybe jitter
        return random_degradation(images, np.random.default_rng(seed))
    if name == "shift":
        rng = np.random.default_rng(seed)
        offsets = torch.from_numpy(rng.choice([-2, 2], size=(b, 2)))  # the corners of the +-2 square
        return shift(images, offsets[:, 0].tolist(), offsets[:, 1].tolist()), offsets
    raise ValueError(f"unknown degradation {name!r}; expected one of {list(WORST)}")


def object_accuracy(det: Detections, scenes: Sequence[dict], offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per drawn object (scene order, objects flattened): (shape right, colour right), bool each."""
    shape_ok, color_ok = [], []
    centre = (det.box[:, :2] + det.box[:, 2:]) / 2
    for i, s in enumerate(scenes):
        rows = (det.image == i).nonzero().flatten()
        for o in s["objects"]:
            cx, cy = o["cx"] + float(offsets[i, 0]), o["cy"] + float(offsets[i, 1])
            box = det.box[rows]
            inside = (box[:, 0] <= cx) & (cx <= box[:, 2]) & (box[:, 1] <= cy) & (cy <= box[:, 3])
            if not inside.any():
                shape_ok.append(False)
                color_ok.append(False)
                continue
            cand = rows[inside]
            d = ((centre[cand] - torch.tensor([cx, cy])) ** 2).sum(1)
            r = int(cand[int(d.argmin())])
            shape_ok.append(int(det.shape[r]) == SHAPE_ID[o["shape"]])
            color_ok.append(int(det.color[r]) == COLOR_ID[o["color"]])
    return torch.tensor(shape_ok), torch.tensor(color_ok)


def robustness_row(
    name: str, scenes: Sequence[dict], prompts: Sequence[dict], reader: str = "net", seed: int = 0
) -> dict[str, float]:
    """Shape / colour accuracy and strict pass of the detector with ``reader`` on
    the renders of ``scenes`` (satisfying ``prompts``) degraded by ``name`` at its worst setting;
    under blur (and the mix, whose blur is at most that) the renders whose objects a blur of 1 px merges
    (``degrade.merged_by_blur``) are left out and counted."""
    images, offsets = degrade_worst(name, render_batch(scenes), seed)
    keep = ~merged_by_blur(scenes, 1.0) if name in ("blur", "mix") else torch.ones(len(scenes), dtype=torch.bool)
    idx = keep.nonzero().flatten().tolist()
    images, offsets = images[idx], offsets[idx]
    scenes, prompts = [scenes[i] for i in idx], [prompts[i] for i in idx]
    ev = evaluate(images, prompts, reader=reader)
    shape_ok, color_ok = object_accuracy(ev.detections, scenes, offsets)
    return {
        "shape_acc": float(shape_ok.float().mean()),
        "color_acc": float(color_ok.float().mean()),
        "strict_pass": float(ev.passed.float().mean()),
        "merged": int((~keep).sum()),
        "n": len(idx),
    }
