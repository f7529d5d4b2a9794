"""Degradations of 32x32 renders that stand in for what a small generator draws: Gaussian blur (PIL's
``ImageFilter.GaussianBlur``), whole-image shifts, additive Gaussian noise and JPEG compression, and
the test of whether a blur *merges* two objects.

All take and return (B, 3, H, W) float images in [0, 1]. The PIL ones (blur, JPEG) go through
8-bit images, as an image file would; ``shift`` and ``add_noise`` stay in float. They are used to
build and test the detector (``detector.py``) on renderer scenes and to measure its robustness on
ground-truth renders of the evaluation prompts (``benchmarks/evaluator.py``).

**Merging.** A blur merges objects when the 8-connected components of the blurred foreground mask
are fewer than the objects: the union of the objects' exact pixel masks (as a 0/1 image) is blurred
by the same PIL filter and thresholded at 1/2. Objects are drawn >= 2 px apart, so this needs the
blur to fill a gap with more than half coverage; such an image no longer shows its objects apart,
and no detector can be asked to count them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

from core.tasks.shapes.render import render_batch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8 (round to nearest)."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) floats in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 255


def _per_image(values, n: int) -> list:
    if isinstance(values, (int, float)):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"expected one value per image ({n}), got {len(values)}")
    return values


def pil_blur(images: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """PIL ``GaussianBlur(radius=sigma)`` of each image (one sigma, or one per image); sigma 0 keeps it."""
    arr = to_uint8(images)
    sigmas = _per_image(sigma, len(arr))
    out = [
        np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius=float(s)))) if s > 0 else a
        for a, s in zip(arr, sigmas)
    ]
    return from_uint8(np.stack(out))


def jpeg(images: torch.Tensor, quality: int | Sequence[int]) -> torch.Tensor:
    """Encode and decode each image as a PIL JPEG of ``quality`` (PIL's defaults: 4:2:0 chroma)."""
    arr = to_uint8(images)
    out = []
    for a, q in zip(arr, _per_image(quality, len(arr))):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(q))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return from_uint8(np.stack(out))


def shift(images: torch.Tensor, dx: int | Sequence[int], dy: int | Sequence[int]) -> torch.Tensor:
    """Translate each image by whole pixels (dx right, dy down); the uncovered border repeats the edge
    row / column (background), what falls off the far edge is lost."""
    b, c, h, w = images.shape
    dxs, dys = torch.tensor(_per_image(dx, b)).view(b, 1), torch.tensor(_per_image(dy, b)).view(b, 1)
    ys = (torch.arange(h) - dys).clamp(0, h - 1)  # (B, H): source row of each target row
    xs = (torch.arange(w) - dxs).clamp(0, w - 1)
    out = images.gather(2, ys.view(b, 1, h, 1).expand(b, c, h, w))
    return out.gather(3, xs.view(b, 1, 1, w).expand(b, c, h, w))


def add_noise(images: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """images + N(0, std^2) per pixel and channel, clamped to [0, 1]."""
    return (images + std * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def object_masks(scenes: Sequence[dict]) -> torch.Tensor:
    """(B, H, W) float: 1 on the pixels covered by some object of each scene (the renderer's masks)."""
    bare = [s | {"background": 0.0, "texture": [0.0] * 16} for s in scenes]
    recoloured = [s | {"objects": [o | {"color": "white"} for o in s["objects"]]} for s in bare]
    return (render_batch(recoloured)[:, 0] > 0.5).float()


def merged_by_blur(scenes: Sequence[dict], sigma: float | Sequence[float]) -> torch.Tensor:
    """(B,) bool: the blur joins objects (see the module docstring for the definition)."""
    masks = object_masks(scenes)
    blurred = pil_blur(masks.unsqueeze(1).expand(-1, 3, -1, -1), sigma)[:, 0] >= 0.5
    out = []
    for s, m in zip(scenes, blurred.numpy()):
        _, n = ndimage.label(m, structure=np.ones((3, 3)))
        out.append(n < len(s["objects"]))
    return torch.tensor(out, dtype=torch.bool)


def random_degradation(
    images: torch.Tensor,
    rng: np.random.Generator,
    max_sigma: float = 1.0,
    max_shift: int = 2,
    noise_std: float = 0.05,
    quality: tuple[int, int] = (75, 90),
    p_clean: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mix of the degradations per image, the distribution the detector is trained on:
    with prob ``p_clean`` none; else with prob 1/2 a colour jitter (channel gains 1 +- 0.12, offsets
    +- 0.05), a shift in [-max_shift, max_shift]^2, PIL blur sigma ~ U(0, max_sigma), with prob 1/2
    noise of std U(0, noise_std), with prob 1/2 a JPEG of quality U{quality}. Returns (images,
    (B, 2) shifts (dx, dy))."""
    b = len(images)
    clean = torch.from_numpy(rng.random(b) < p_clean)
    offsets = torch.from_numpy(rng.integers(-max_shift, max_shift + 1, (b, 2))) * ~clean.view(b, 1)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    jitter = torch.from_numpy(rng.random(b) < 0.5).view(b, 1, 1, 1)
    gain = torch.where(jitter, 1 + 0.12 * (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1), torch.ones(1))
    bias = torch.where(jitter, 0.05 * (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1), torch.zeros(1))
    x = shift((images * gain + bias).clamp(0, 1), offsets[:, 0].tolist(), offsets[:, 1].tolist())
    x = pil_blur(x, rng.uniform(0, max_sigma, b).tolist())
    std = torch.from_numpy(rng.uniform(0, noise_std, b) * (rng.random(b) < 0.5)).float().view(b, 1, 1, 1)
    x = (x + std * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    use_jpeg = rng.random(b) < 0.5
    qualities = rng.integers(quality[0], quality[1] + 1, b)
    if use_jpeg.any():
        idx = torch.from_numpy(np.flatnonzero(use_jpeg))
        x[idx] = jpeg(x[idx], qualities[use_jpeg].tolist())
    return torch.where(clean.view(b, 1, 1, 1), images, x), offsets
