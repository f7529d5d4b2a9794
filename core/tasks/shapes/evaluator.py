"""Shapes-GenEval judging: GenEval's rules (Ghosh et al. 2023, ``evaluate_images.py``) applied to the
objects the detector (``detector.py``: colour segmentation, connected components, a shape reader
robust to the blur, shifts, noise and JPEG of generated 32x32 images) finds in each image.

Judging (GenEval's rules, with box area standing in for detector confidence):

* an ``include`` entry {class, count} needs >= count objects of the class; with ``color`` the
  ``count`` largest of them must all have that colour; with ``position: [rel, g]`` each of them
  must stand in ``rel`` to the objects found for include entry g (GenEval's relative_position with
  margin 0.1); an ``exclude`` entry {class, count} needs fewer than count objects of the class.
* strict: all entries satisfied (0/1). Partial credit (the RL reward): the mean over clauses of
  count 1 - |required - found| / required (exact counts) or min(found, required)/required,
  colour (matching among the ``count`` largest)/count, position 0/1. Strict pass <=> reward == 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.tasks.shapes.detector import Detections, detect
from core.tasks.shapes.grammar import COLORS, RELATIONS, SHAPES, TAGS
from core.tasks.shapes.render import COLOR_ID, RELATION_INDEX, SHAPE_ID, relations
from core.tasks.shapes.segment import classify_pixels, connected_components

__all__ = ["Detections", "Evaluation", "classify_pixels", "connected_components", "detect", "evaluate", "geneval_score"]
MAX_RANK = 4  # largest objects per (image, class) kept for colour checks: counts go up to 4


@dataclass
class Evaluation:
    """Per-image verdicts. ``passed`` (B,) bool (GenEval strict), ``reward`` (B,) partial credit in
    [0, 1], ``scores`` (B,) = passed (strict) or reward, ``tags`` the prompts' categories."""

    passed: torch.Tensor
    reward: torch.Tensor
    scores: torch.Tensor
    tags: list[str]
    detections: Detections

    def verdict(self, i: int) -> str:
        word = "pass" if bool(self.passed[i]) else "fail"
        return f"{word} (reward {float(self.reward[i]):.2f}; found {self.detections.describe(i)})"


def _encode(metadata: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Pad the prompts' include (<= 2) and exclude (<= 2) entries into (B, 2) index tensors."""
    keys = ("cls", "count", "color", "rel", "target", "ex_cls", "ex_count")
    enc = {k: [[-1, -1] for _ in metadata] for k in keys}
    for i, m in enumerate(metadata):
        inc, exc = m.get("include") or [], m.get("exclude") or []
        if not 1 <= len(inc) <= 2 or len(exc) > 2:
            raise ValueError(f"prompt {i} ({m.get('prompt')!r}): need 1-2 include and <= 2 exclude entries")
        for j, r in enumerate(inc):
            if r["class"] not in SHAPE_ID:
                raise ValueError(f"prompt {i}: unknown class {r['class']!r}; expected one of {SHAPES}")
            count = int(r.get("count", 1))
            if not 1 <= count <= MAX_RANK:
                raise ValueError(f"prompt {i}: include count must be in 1..{MAX_RANK}, got {count}")
            enc["cls"][i][j], enc["count"][i][j] = SHAPE_ID[r["class"]], count
            if r.get("color") is not None:
                if r["color"] not in COLOR_ID:
                    raise ValueError(f"prompt {i}: unknown colour {r['color']!r}; expected one of {COLORS}")
                enc["color"][i][j] = COLOR_ID[r["color"]]
            if r.get("position") is not None:
                rel, target = r["position"]
                if rel not in RELATIONS or int(target) >= j or count != 1:
                    raise ValueError(
                        f"prompt {i}: bad position {r['position']!r} (relation in "
                        f"{list(RELATIONS)}, earlier target group, count 1)"
                    )
                enc["rel"][i][j], enc["target"][i][j] = RELATION_INDEX[rel], int(target)
        for j, r in enumerate(exc):
            enc["ex_cls"][i][j], enc["ex_count"][i][j] = SHAPE_ID[r["class"]], int(r["count"])
    return {k: torch.tensor(v, dtype=torch.long).view(len(metadata), 2) for k, v in enc.items()}


def evaluate(
    images: torch.Tensor, prompts_metadata: Sequence[dict], strict: bool = True, reader: str = "net"
) -> Evaluation:
    """Judge image i against prompt i. images: (B, 3, H, W) in [0, 1]; metadata: B GenEval dicts;
    ``reader``: the detector's shape reader ("net", or the first detector's "centroid")."""
    if len(prompts_metadata) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts_metadata)} prompts")
    det = detect(images, reader=reader)
    enc = _encode(prompts_metadata)
    b, ns = images.shape[0], len(SHAPES)
    n_class = torch.zeros(b * ns).index_add_(0, det.image * ns + det.shape, torch.ones(len(det.image)))
    n_class = n_class.view(b, ns)
    top_color = torch.full((b, ns, MAX_RANK), -1, dtype=torch.long)  # colours of the 4 largest
    top_box = torch.zeros(b, ns, 4)
    sel = det.rank < MAX_RANK
    top_color[det.image[sel], det.shape[sel], det.rank[sel]] = det.color[sel]
    first = det.rank == 0
    top_box[det.image[first], det.shape[first]] = det.box[first]
    rows = torch.arange(b)
    clauses, ok, req_ok = [], torch.ones(b, dtype=torch.bool), []
    for j in range(2):
        active = enc["cls"][:, j] >= 0
        cls, count = enc["cls"][:, j].clamp_min(0), enc["count"][:, j].clamp_min(1).float()
        found = n_class[rows, cls]
        exact = (enc["ex_cls"] == enc["cls"][:, j : j + 1]) & (enc["ex_count"] == enc["count"][:, j : j + 1] + 1)
        exact = exact.any(1)
        count_credit = torch.where(
            exact, (1 - (count - found).abs() / count).clamp_min(0), torch.minimum(found, count) / count
        )
        ranks = torch.arange(MAX_RANK).view(1, -1) < count.view(-1, 1)
        matches = ((top_color[rows, cls] == enc["color"][:, j : j + 1]) & ranks).sum(1).float()
        has_color = enc["color"][:, j] >= 0
        color_credit = matches / count
        this_ok = (found >= count) & (~has_color | (matches >= count))
        has_rel = enc["rel"][:, j] >= 0
        tgt = enc["target"][:, j].clamp_min(0)
        tgt_cls = enc["cls"][rows, tgt].clamp_min(0)
        rel_holds = relations(top_box[rows, cls], top_box[rows, tgt_cls])[rows, enc["rel"][:, j].clamp_min(0)]
        tgt_ok = torch.stack(req_ok, 1)[rows, tgt] if req_ok else torch.zeros(b, dtype=torch.bool)
        pos_ok = rel_holds & (found >= 1) & (n_class[rows, tgt_cls] >= 1)
        this_ok = this_ok & (~has_rel | (pos_ok & tgt_ok))
        req_ok.append(this_ok)
        ok &= ~active | this_ok
        clauses += [(active, count_credit), (active & has_color, color_credit), (active & has_rel, pos_ok.float())]
    for j in range(2):  # excludes that are not the "exactly N" half of a counting prompt
        ex_active = enc["ex_cls"][:, j] >= 0
        n_ex = n_class[rows, enc["ex_cls"][:, j].clamp_min(0)]
        ex_ok = n_ex < enc["ex_count"][:, j].float()
        ok &= ~ex_active | ex_ok
        paired = (enc["cls"] == enc["ex_cls"][:, j : j + 1]) & (enc["count"] + 1 == enc["ex_count"][:, j : j + 1])
        clauses.append((ex_active & ~paired.any(1), ex_ok.float()))
    weight = torch.stack([a.float() for a, _ in clauses], 1)
    credit = torch.stack([c for _, c in clauses], 1)
    reward = (weight * credit).sum(1) / weight.sum(1).clamp_min(1)
    tags = [m.get("tag", "unknown") for m in prompts_metadata]
    return Evaluation(ok, reward, ok.float() if strict else reward, tags, det)


def category_scores(passed: torch.Tensor, tags: Sequence[str]) -> dict[str, tuple[float, float, int]]:
    """{tag: (pass rate, binomial standard error sqrt(p(1-p)/n), n)} over the tags present."""
    out = {}
    for tag in TAGS:
        sel = torch.tensor([t == tag for t in tags], dtype=torch.bool)
        n = int(sel.sum())
        if n:
            p = float(passed[sel].float().mean())
            out[tag] = (p, math.sqrt(p * (1 - p) / n), n)
    return out


def geneval_score(images: torch.Tensor, prompts_metadata: Sequence[dict], reader: str = "net") -> dict[str, float]:
    """GenEval score: the mean over categories of the strict per-image pass rate.

    Returns {"overall", "overall_se", "<tag>", "<tag>_se", "<tag>_n"} (se: binomial standard error;
    the overall's is sqrt(sum se_c^2) / n_categories)."""
    ev = evaluate(images, prompts_metadata, strict=True, reader=reader)
    cats = category_scores(ev.passed, ev.tags)
    if not cats:
        raise ValueError("geneval_score: no prompt has a GenEval tag " + str(TAGS))
    out: dict[str, float] = {}
    for tag, (p, se, n) in cats.items():
        out[tag], out[f"{tag}_se"], out[f"{tag}_n"] = p, se, float(n)
    out["overall"] = sum(p for p, _, _ in cats.values()) / len(cats)
    out["overall_se"] = math.sqrt(sum(se**2 for _, se, _ in cats.values())) / len(cats)
    return out
