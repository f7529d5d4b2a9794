"""The Shapes-GenEval detector: colour components (``segment.py``) read as objects.

1. each pixel is read as a mix of one palette colour with the dark background and takes that
   colour when its coverage is >= 1/2 and the mix explains it; 8-connected components of equal
   colour (``segment.components``);
2. a component is an object when its area >= ``min_area_frac`` * H * W, its box is not too
   elongated (``max_aspect``), its mean colour distance to its palette colour is
   <= ``max_mean_color_dist`` (blobs of in-between colours fail) and its four binary shape
   features (below) lie within ``max_shape_dist`` of some shape's;
3. its shape is read by one of two readers:

   * ``"net"`` (default): a small MLP (``shape_net.py``) on the component's soft coverage map
     (the pixel's projection on its colour's mixing line, which keeps what blur spreads below the
     1/2 threshold: a blurred diamond's tips, a square's corners) sampled on a 12 x 12 grid over its
     box, plus the binary features. It is trained on renders of random grammar scenes under random
     blur, shifts, noise, JPEG and colour jitter -- never on the evaluation prompts -- and reads
     clean renders exactly;
   * ``"centroid"`` (the first detector, kept for comparison): nearest centroid of four scale-free
     features of the binary component in box-normalised coordinates (u, v) in [-1, 1]^2 -- box
     fill ratio (square 1, circle pi/4, diamond and triangle 1/2), mass fraction in the top half
     (apex-up triangle 1/4, the others 1/2), mean and max of |u| + |v| (diamond's max is 1,
     circle's sqrt 2, square's 2) -- in units of the features' spread. Exact on clean renders, but
     under a blur of 1 px a diamond's tips and a square's corners fall below the colour threshold
     and it reads both as circles (strict pass 0.90 at PIL blur 1, 0.83 at JPEG q75 on the
     evaluation set's ground truth; ``benchmarks/evaluator.py``).

See ``docs/methods/shapes_geneval.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.tasks.shapes.grammar import COLORS, SHAPES
from core.tasks.shapes.segment import Components, components
from core.tasks.shapes.shape_net import descriptors, load_shape_net

# Binary shape features (box fill, top-half mass fraction, mean and max L1 radius |u| + |v| in
# box-normalised coordinates). Continuous-shape values: square (1, 1/2, 1, 2), circle (pi/4, 1/2,
# 8/(3 pi), sqrt 2), triangle (1/2, 1/4, ~0.85, 2), diamond (1/2, 1/2, 2/3, 1). The centroids and
# scales below are their means / pooled std over 6,000 renders (r 4.5-6.5 px, sub-pixel offsets,
# Gaussian blur 0-0.9 px), which absorb the pixel grid's bias.
SHAPE_CENTROIDS = torch.tensor(
    [  # rows in SHAPES order
        [1.0000, 0.5000, 0.9956, 1.8157],
        [0.7923, 0.4994, 0.8518, 1.3887],
        [0.5842, 0.2780, 0.8516, 1.7887],
        [0.5713, 0.5016, 0.7083, 1.0202],
    ]
)
FEATURE_SCALE = torch.tensor([0.0401, 0.0223, 0.0218, 0.0565])
READERS = ("net", "centroid")


@dataclass
class Detections:
    """Objects found in a batch, one row per object: ``image`` (N,), ``shape`` (N,) index into
    SHAPES, ``color`` (N,) index into COLORS, ``area`` (N,), ``box`` (N, 4) as (x0, y0, x1, y1)
    in pixel-edge coordinates, ``rank`` (N,) 0 = largest of its class in its image."""

    image: torch.Tensor
    shape: torch.Tensor
    color: torch.Tensor
    area: torch.Tensor
    box: torch.Tensor
    rank: torch.Tensor
    batch_size: int

    def describe(self, i: int) -> str:
        rows = (self.image == i).nonzero().flatten().tolist()
        if not rows:
            return "nothing"
        return ", ".join(f"{COLORS[self.color[r]]} {SHAPES[self.shape[r]]}" for r in rows)


def shape_features(comps: Components) -> torch.Tensor:
    """(n, 4) binary shape features of each component (see the module docstring)."""
    n, comp, xs, ys = len(comps), comps.comp, comps.xs, comps.ys
    x0, y0, x1, y1 = comps.box.unbind(1)
    bw, bh = x1 - x0, y1 - y0
    u = (xs + 0.5 - ((x0 + x1) / 2)[comp]) / (bw / 2)[comp]
    v = (ys + 0.5 - ((y0 + y1) / 2)[comp]) / (bh / 2)[comp]
    top = torch.bincount(comp, weights=(v * bh[comp] < -0.5).float(), minlength=n)
    bottom = torch.bincount(comp, weights=(v * bh[comp] > 0.5).float(), minlength=n)
    l1 = u.abs() + v.abs()
    return torch.stack(
        [
            comps.area / (bw * bh),  # box fill
            top / (top + bottom).clamp_min(1),  # mass fraction in the top half
            torch.bincount(comp, weights=l1, minlength=n) / comps.area,  # mean L1 radius
            comps.reduce(l1, "amax"),  # max L1 radius
        ],
        dim=1,
    )


def detect_components(
    images: torch.Tensor,
    max_color_dist: float = 0.5,
    max_mean_color_dist: float = 0.3,
    min_area_frac: float = 0.012,
    max_aspect: float = 1.7,
    max_shape_dist: float = 200.0,
    core_purity: bool = True,
) -> tuple[Components, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2 of the module docstring: (components, their binary features (n, 4), the indices of
    those that are objects, the centroid reader's shape of every component (n,)). ``core_purity``:
    judge colour purity on the component's interior pixels (else on all, as the first detector)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"detect expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
    _, _, h, w = images.shape
    comps = components(images, max_color_dist)
    feats = shape_features(comps)
    dist = (((feats.unsqueeze(1) - SHAPE_CENTROIDS) / FEATURE_SCALE) ** 2).sum(-1)  # (n, 4 shapes)
    best, shape = dist.min(dim=1)
    bw, bh = (comps.box[:, 2:] - comps.box[:, :2]).unbind(1)
    purity = comps.core_color_dist if core_purity else comps.mean_color_dist
    keep = (best <= max_shape_dist) & (purity <= max_mean_color_dist)
    keep &= (comps.area >= min_area_frac * h * w) & (torch.maximum(bw / bh, bh / bw) <= max_aspect)
    return comps, feats, keep.nonzero().flatten(), shape


def detect(images: torch.Tensor, reader: str = "net", **filters: float) -> Detections:
    """Object detection on (B, 3, H, W) images in [0, 1]; see the module docstring. ``filters``:
    the thresholds of :func:`detect_components`."""
    if reader not in READERS:
        raise ValueError(f"detect: unknown reader {reader!r}; expected one of {READERS}")
    images = images.detach().float().cpu().clamp(0, 1) if images.ndim == 4 else images
    comps, feats, idx, shape = detect_components(images, core_purity=reader == "net", **filters)
    if reader == "net" and len(idx):
        with torch.no_grad():
            shape[idx] = load_shape_net()(descriptors(images, comps, feats, idx)).argmax(1)
    det_img, det_shape, det_area = comps.image[idx], shape[idx], comps.area[idx]
    return Detections(
        det_img, det_shape, comps.color[idx], det_area, comps.box[idx], _rank(det_img, det_shape, det_area), len(images)
    )


def _rank(image: torch.Tensor, shape: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Rank of each object by decreasing area within its (image, class) group."""
    if len(image) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(area, descending=True, stable=True)
    group = image * len(SHAPES) + shape
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    pos = torch.arange(len(g))
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - first
    return rank
