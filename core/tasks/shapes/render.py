"""Procedural Shapes scenes: layout sampling from prompt metadata and a vectorised renderer.

A *scene* is a plain dict (JSON-able, so it can sit in a checkpoint or a fixture)::

    {"size": 32, "background": 0.12, "texture": [16 floats in [-1, 1]],
     "objects": [{"shape": "circle", "color": "red", "cx": 9.3, "cy": 20.1, "r": 5.0}, ...]}

``(cx, cy)`` is the centre in pixel units (x to the right, y down), ``r`` the half-side of the
object's bounding box. Pixel (i, j) is inside an object when its centre (j + 0.5, i + 0.5),
relative to (cx, cy) as (dx, dy), satisfies

* square:   max(|dx|, |dy|) <= r        (fill of the box 1)
* circle:   dx^2 + dy^2 <= r^2          (fill pi/4)
* diamond:  |dx| + |dy| <= r            (fill 1/2, mass centred)
* triangle: -r <= dy <= r, |dx| <= (dy + r) / 2   (apex up: fill 1/2, 1/4 of the mass in the top half)

Images are (3, H, W) floats in [0, 1] on a dark, lightly textured background. Objects never
overlap and keep a gap of >= 2 px, so exact colour segmentation recovers every object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.tasks.shapes.grammar import PALETTE, RELATIONS, SHAPES

SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}
PALETTE_TENSOR = torch.tensor(list(PALETTE.values()), dtype=torch.float32)  # (8, 3)
COLOR_ID = {c: i for i, c in enumerate(PALETTE)}
GAP_PX = 2.0


def relations(box_a: torch.Tensor, box_b: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """GenEval's ``relative_position``, vectorised: which of (left of, right of, above, below)
    hold for A relative to B.

    box_*: (N, 4) as (x0, y0, x1, y1), y down. offset = centre_a - centre_b; each component is
    shrunk by ``threshold * (dim_a + dim_b)`` (so touching-but-overlapping boxes relate to
    nothing), divided by |offset|, and a relation holds when its component exceeds 0.5.
    Returns (N, 4) bool in the order of ``RELATIONS``."""
    ca = (box_a[:, :2] + box_a[:, 2:]) / 2
    cb = (box_b[:, :2] + box_b[:, 2:]) / 2
    dims = (box_a[:, 2:] - box_a[:, :2]).abs() + (box_b[:, 2:] - box_b[:, :2]).abs()
    offset = ca - cb
    revised = (offset.abs() - threshold * dims).clamp_min(0) * offset.sign()
    norm = offset.norm(dim=1, keepdim=True).clamp_min(1e-9)
    d = revised / norm
    out = torch.stack([d[:, 0] < -0.5, d[:, 0] > 0.5, d[:, 1] < -0.5, d[:, 1] > 0.5], dim=1)
    return out & (revised.abs().amax(dim=1, keepdim=True) >= 1e-3)


RELATION_INDEX = {name: i for i, name in enumerate(RELATIONS)}


def object_box(obj: dict) -> list[float]:
    return [obj["cx"] - obj["r"], obj["cy"] - obj["r"], obj["cx"] + obj["r"], obj["cy"] + obj["r"]]


def _free(obj: dict, placed: list[dict]) -> bool:
    for o in placed:
        sep = max(abs(obj["cx"] - o["cx"]) - obj["r"] - o["r"], abs(obj["cy"] - o["cy"]) - obj["r"] - o["r"])
        if sep < GAP_PX:
            return False
    return True


def _relation_exact(a: dict, b: dict, rel: str, threshold: float = 0.1) -> bool:
    """A stands in relation ``rel`` to B and in no other one (unambiguous captions); the scalar
    twin of :func:`relations` (layout sampling calls it thousands of times)."""
    ox, oy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    dim = 2 * (a["r"] + b["r"])
    norm = math.hypot(ox, oy)
    if norm == 0:
        return False
    rx = math.copysign(max(abs(ox) - threshold * dim, 0.0), ox) / norm
    ry = math.copysign(max(abs(oy) - threshold * dim, 0.0), oy) / norm
    holds = {"left of": rx < -0.5, "right of": rx > 0.5, "above": ry < -0.5, "below": ry > 0.5}
    return holds[rel] and sum(holds.values()) == 1


def sample_scene(
    metadata: dict,
    rng: np.random.Generator,
    size: int = 32,
    forbidden: Sequence[tuple[str, str]] = (),
    max_tries: int = 200,
) -> dict:
    """A random scene that satisfies ``metadata`` exactly: every include entry rendered ``count``
    times (its colour if given, else a random colour not making a ``forbidden`` (shape, colour)
    pair), positioned relations made unambiguous, and no other objects."""
    include = metadata.get("include")
    if not include:
        raise ValueError(f"metadata needs a non-empty 'include' list, got {metadata!r}")
    scale = size / 32.0
    for _ in range(max_tries):
        placed: list[dict] = []
        groups: list[list[dict]] = []
        ok = True
        for req in include:
            shape, count = req["class"], int(req.get("count", 1))
            if shape not in SHAPE_ID:
                raise ValueError(f"unknown shape {shape!r} in metadata; expected one of {SHAPES}")
            group = []
            for _k in range(count):
                color = req.get("color") or _random_color(shape, rng, forbidden)
                obj = _place(shape, color, rng, size, scale, placed, req.get("position"), groups)
                if obj is None:
                    ok = False
                    break
                placed.append(obj)
                group.append(obj)
            if not ok:
                break
            groups.append(group)
        if ok:
            return {
                "size": size,
                "background": float(rng.uniform(0.05, 0.2)),
                "texture": [float(v) for v in rng.uniform(-1, 1, 16)],
                "objects": placed,
            }
    raise RuntimeError(f"could not lay out {metadata!r} at size {size} in {max_tries} tries")


def _random_color(shape: str, rng: np.random.Generator, forbidden: Sequence[tuple[str, str]]) -> str:
    allowed = [c for c in PALETTE if (shape, c) not in forbidden]
    return allowed[int(rng.integers(len(allowed)))]


def _place(shape, color, rng, size, scale, placed, position, groups, tries: int = 60) -> dict | None:
    """First of ``tries`` random placements that is free (and in ``position`` to its target group)."""
    u = rng.random((tries, 3))  # one vectorised draw: scalar Generator calls dominate otherwise
    for ur, ux, uy in u.tolist():
        r = (4.5 + 2.0 * ur) * scale
        lo, span = r + 1.0, size - 2 * r - 2.0
        obj = {"shape": shape, "color": color, "cx": lo + span * ux, "cy": lo + span * uy, "r": r}
        if not _free(obj, placed):
            continue
        if position is not None:
            rel, target = position
            if not all(_relation_exact(obj, b, rel) for b in groups[int(target)]):
                continue
        return obj
    return None


def render_batch(scenes: Sequence[dict]) -> torch.Tensor:
    """Render scenes of one size: (B, 3, H, W) floats in [0, 1], vectorised over scenes and objects."""
    if not scenes:
        raise ValueError("render_batch needs at least one scene")
    size = int(scenes[0]["size"])
    if any(int(s["size"]) != size for s in scenes):
        raise ValueError("render_batch: all scenes must have the same 'size'")
    b, k = len(scenes), max(1, max(len(s["objects"]) for s in scenes))
    shape_rows = [
        [SHAPE_ID[o["shape"]] for o in s["objects"]] + [-1] * (k - len(s["objects"])) for s in scenes
    ]
    color_rows = [
        [COLOR_ID[o["color"]] for o in s["objects"]] + [0] * (k - len(s["objects"])) for s in scenes
    ]
    geom_rows = [
        [[o["cx"], o["cy"], o["r"]] for o in s["objects"]] + [[0.0, 0.0, 0.0]] * (k - len(s["objects"]))
        for s in scenes
    ]
    shape, color = torch.tensor(shape_rows), torch.tensor(color_rows)
    geom = torch.tensor(geom_rows, dtype=torch.float32)  # (B, K, 3): cx, cy, r
    centers = torch.arange(size, dtype=torch.float32) + 0.5
    dx = centers.view(1, 1, 1, -1) - geom[..., 0, None, None]  # (B, K, 1, W)
    dy = centers.view(1, 1, -1, 1) - geom[..., 1, None, None]  # (B, K, H, 1)
    r = geom[..., 2, None, None]
    masks = torch.stack(
        [
            torch.maximum(dx.abs(), dy.abs()) <= r,
            dx**2 + dy**2 <= r**2,
            (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2),
            dx.abs() + dy.abs() <= r,
        ]
    )  # (4 shapes, B, K, H, W)
    sel = shape.clamp_min(0).view(1, b, k, 1, 1).expand(1, b, k, size, size)
    mask = torch.gather(masks, 0, sel)[0] & (shape >= 0)[..., None, None]  # (B, K, H, W)
    rgb = PALETTE_TENSOR[color]  # (B, K, 3)
    level = torch.tensor([float(s["background"]) for s in scenes]).view(b, 1, 1, 1)
    texture = torch.tensor([s["texture"] for s in scenes], dtype=torch.float32).view(b, 1, 4, 4)
    bg = level + 0.04 * F.interpolate(texture, size=(size, size), mode="bilinear", align_corners=False)
    img = bg.expand(b, 3, size, size).clone()
    covered = mask.any(dim=1, keepdim=True)  # objects never overlap: the sum is one colour
    paint = torch.einsum("bkhw,bkc->bchw", mask.float(), rgb)
    return torch.where(covered, paint, img).clamp(0, 1)


def render_scene(metadata: dict, seed: int = 0, size: int = 32) -> torch.Tensor:
    """(3, H, W) image in [0, 1]. ``metadata`` is a scene (has "objects") or a prompt's metadata
    (has "include"), in which case a satisfying scene is sampled with ``seed``."""
    if "objects" in metadata:
        return render_batch([metadata])[0]
    return render_batch([sample_scene(metadata, np.random.default_rng(seed), size)])[0]


def ground_truth_images(prompts: Sequence[dict], seed: int = 0, size: int = 32) -> torch.Tensor:
    """(N, 3, H, W) renders of a satisfying scene per prompt; prompt i uses seed (seed, i)."""
    scenes = [sample_scene(p, np.random.default_rng([seed, i]), size) for i, p in enumerate(prompts)]
    return render_batch(scenes)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (robustness tests, augmentation)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
