"""Colour segmentation of Shapes images: each pixel read as a palette colour or background, then
8-connected components of equal colour, with their areas, boxes and pixel lists (vectorised over
the batch, no per-image Python). The first stage of the detector (``detector.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.tasks.shapes.render import PALETTE_TENSOR

BACKGROUND_RGB = (0.12, 0.12, 0.12)
_LUT_LEVELS = 32  # colour quantisation of the lookup table: 1/31 per channel, far below the palette gaps
_LUT_CACHE: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}


def _color_lut(max_color_dist: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each quantised RGB bin centre x (32^3, r major): its class and its distance to that
    palette colour.

    A pixel is read as a mix x = bg + c (colour - bg) of one palette colour with the background
    (anti-aliased or blurred edges are such mixes). It takes the colour whose mixing line passes
    closest to it among those with coverage c >= 1/2, if that residual is <= ``max_color_dist`` / 2;
    otherwise it is background (-1). Judging coverage, not raw distance, keeps bright and dark
    colours equally thick under blur."""
    if max_color_dist not in _LUT_CACHE:
        levels = torch.linspace(0, 1, _LUT_LEVELS)
        rgb = torch.cartesian_prod(levels, levels, levels)  # (32^3, 3)
        bg = torch.tensor(BACKGROUND_RGB)
        direction = PALETTE_TENSOR - bg  # (8, 3)
        coverage = ((rgb - bg) @ direction.T) / (direction**2).sum(1)  # (32^3, 8)
        mix = bg + coverage.clamp(0, 1).unsqueeze(-1) * direction  # nearest point on each mixing segment
        residual = (rgb.unsqueeze(1) - mix).norm(dim=-1)
        residual[coverage < 0.5] = float("inf")
        best, idx = residual.min(dim=1)
        idx[best > max_color_dist / 2] = -1
        dist = torch.cdist(rgb, PALETTE_TENSOR).gather(1, idx.clamp_min(0).unsqueeze(1)).squeeze(1)
        _LUT_CACHE[max_color_dist] = (idx.to(torch.int8), dist)
    return _LUT_CACHE[max_color_dist]


def _lut_codes(images: torch.Tensor) -> torch.Tensor:
    q = (images.clamp(0, 1) * (_LUT_LEVELS - 1)).round_().to(torch.int32)
    return (q[:, 0] * _LUT_LEVELS + q[:, 1]) * _LUT_LEVELS + q[:, 2]


def classify_pixels(images: torch.Tensor, max_color_dist: float = 0.5) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W) long: palette index or -1 (background / no colour), see
    :func:`_color_lut`. A 32^3 lookup table makes this three multiply-adds and one gather per pixel."""
    return _color_lut(max_color_dist)[0][_lut_codes(images)].long()


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def connected_components(classes: torch.Tensor, max_iter: int = 64) -> torch.Tensor:
    """8-connected components of equal class (class >= 0). (B, H, W) -> (B, H, W) long labels:
    0 for unassigned pixels, else 1 + the flat index (within its image) of the component's root.

    Runs on the foreground pixels only (a table of their same-class neighbours), by max-label
    propagation (each pixel takes the largest label among itself and its neighbours) with pointer
    jumping (a label names a pixel of the same component whose label is >= it, so
    label <- label[label] is safe and halves path lengths): a handful of passes."""
    b, h, w = classes.shape
    flat_cls = classes.reshape(-1)
    pix = (flat_cls >= 0).nonzero().flatten()  # (N,) flat indices into B*H*W
    n = len(pix)
    out = torch.zeros(b * h * w, dtype=torch.long)
    if n == 0:
        return out.view(b, h, w)
    pos = torch.full((b * h * w,), n, dtype=torch.long)  # pixel -> foreground index; n = "none"
    pos[pix] = torch.arange(n)
    yi, xi = (pix % (h * w)) // w, pix % w
    nbr = []
    for dy, dx in _OFFSETS:
        yy, xx = yi + dy, xi + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        q = pix + dy * w + dx
        q = torch.where(inside, q, pix)
        nbr.append(torch.where(inside & (flat_cls[q] == flat_cls[pix]), pos[q], n))
    nbr = torch.stack(nbr, dim=1)  # (N, 8)
    lab = torch.arange(n + 1)  # label = foreground index of a root pixel; entry n is the zero pad
    lab[n] = -1
    for _ in range(max_iter):
        new = torch.maximum(lab[:n], lab[nbr].amax(dim=1))
        new = lab[new]  # pointer jumping: lab[new] >= new
        if torch.equal(new, lab[:n]):
            break
        lab[:n] = new
    out[pix] = pix[lab[:n]] % (h * w) + 1
    return out.view(b, h, w)


@dataclass
class Components:
    """The colour components of a batch. Per component (n,): ``image``, ``color`` (palette index),
    ``area`` (pixels), ``box`` (n, 4) as (x0, y0, x1, y1) in pixel-edge coordinates,
    ``mean_color_dist`` (mean distance of its pixels to its palette colour), ``core_color_dist``
    (the same over its interior pixels, whose 8 neighbours are all in it, where it has any: a blurred
    edge is a mix with the background, far from the palette colour in a thin object). Per foreground pixel
    (N,): ``comp`` (its component), ``xs``, ``ys``. ``labels`` (B, H, W): 0 on background, else
    1 + the component index; ``classes`` (B, H, W) the pixel colours."""

    image: torch.Tensor
    color: torch.Tensor
    area: torch.Tensor
    box: torch.Tensor
    mean_color_dist: torch.Tensor
    core_color_dist: torch.Tensor
    comp: torch.Tensor
    xs: torch.Tensor
    ys: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return len(self.image)

    def reduce(self, values: torch.Tensor, how: str) -> torch.Tensor:
        """Per-component ``how`` ("sum", "amin", "amax") of per-pixel ``values``."""
        return torch.zeros(len(self)).scatter_reduce(0, self.comp, values, how, include_self=False)


def components(images: torch.Tensor, max_color_dist: float = 0.5) -> Components:
    """Segment (B, 3, H, W) images in [0, 1] into colour components (see :class:`Components`)."""
    b, _, h, w = images.shape
    codes = _lut_codes(images)
    lut_class, lut_dist = _color_lut(max_color_dist)
    classes = lut_class[codes].long()
    labels = connected_components(classes)
    pix = (labels.view(-1) > 0).nonzero().flatten()
    img_of = pix // (h * w)
    comp_keys, comp = torch.unique(img_of * (h * w + 1) + labels.view(-1)[pix], return_inverse=True)
    n = len(comp_keys)
    ys, xs = ((pix % (h * w)) // w).float(), (pix % w).float()
    area = torch.bincount(comp, minlength=n).float()
    image = comp_keys // (h * w + 1)
    root = (comp_keys % (h * w + 1)) - 1  # a pixel of the component: its colour is the component's
    color = classes.view(b, h * w)[image, root]
    pix_dist = lut_dist[codes.view(-1)[pix]]
    dist = torch.bincount(comp, weights=pix_dist, minlength=n) / area.clamp_min(1)
    padded = torch.nn.functional.pad(labels, (1, 1, 1, 1))
    inner = torch.ones(b, h, w, dtype=torch.bool)
    for dy, dx in _OFFSETS:
        inner &= padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] == labels
    inner = inner.view(-1)[pix].float()
    n_inner = torch.bincount(comp, weights=inner, minlength=n)
    core = torch.bincount(comp, weights=pix_dist * inner, minlength=n) / n_inner.clamp_min(1)
    core = torch.where(n_inner > 0, core, dist)
    out = Components(image, color, area, torch.zeros(n, 4), dist, core, comp, xs, ys, torch.zeros(b * h * w, dtype=torch.long), classes)
    out.box = torch.stack([out.reduce(xs, "amin"), out.reduce(ys, "amin"), out.reduce(xs, "amax") + 1, out.reduce(ys, "amax") + 1], dim=1)
    out.labels[pix] = comp + 1
    out.labels = out.labels.view(b, h, w)
    return out
