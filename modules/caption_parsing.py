"""Shapes captions <-> GenEval metadata, and the caption checks of the image + caption model
(modules/multimodal_text_image.py): parse a generated caption back into metadata, decide whether it is
true of an image (the exact evaluator, strict), and its consistency against shuffled pairings."""

from __future__ import annotations

import math

import torch

from core.tasks.shapes import evaluate
from core.tasks.shapes.grammar import COLORS, NUMBERS, PLURALS, RELATIONS, SHAPES, TAGS, Tokenizer, caption

_COUNT_WORDS = {"a": 1, "an": 1} | {w: n for n, w in NUMBERS.items() if n > 1}
_SINGULAR = {s: s for s in SHAPES}
_PLURAL = {p: s for s, p in PLURALS.items()}
_RELATION_WORDS = {tuple(phrase.split()): rel for rel, phrase in RELATIONS.items()}


def _noun_phrase(words: list[str], i: int) -> tuple[dict, int] | None:
    """'a red circle' / 'three squares' starting at words[i] -> (include entry, next index)."""
    if i >= len(words) or words[i] not in _COUNT_WORDS:
        return None
    count, i = _COUNT_WORDS[words[i]], i + 1
    color = None
    if i < len(words) and words[i] in COLORS:
        color, i = words[i], i + 1
    nouns = _SINGULAR if count == 1 else _PLURAL
    if i >= len(words) or words[i] not in nouns:
        return None
    entry = {"class": nouns[words[i]], "count": count} | ({"color": color} if color else {})
    return entry, i + 1


def parse_caption(text: str) -> dict | None:
    """Caption -> GenEval metadata (the inverse of core.tasks.shapes.grammar.caption), or None when it is not a
    sentence of the grammar. Forms: NP; NP and NP; NP <relation> NP (both of count 1). A single NP of
    count n > 1 means exactly n (an exclude of n + 1, as in the counting prompts). Articles must agree
    ('an orange'): the parse is accepted only if the metadata's caption gives back the same words."""
    words = text.split()
    first = _noun_phrase(words, 0)
    if first is None:
        return None
    a, i = first
    if i == len(words):
        meta = {"include": [a]}
        if a["count"] > 1:
            meta |= {"tag": "counting", "exclude": [{"class": a["class"], "count": a["count"] + 1}]}
        else:
            meta["tag"] = "colors" if "color" in a else "single_object"
    elif words[i] == "and":
        second = _noun_phrase(words, i + 1)
        if second is None or second[1] != len(words):
            return None
        meta = {"tag": "color_attr" if "color" in a else "two_object", "include": [a, second[0]]}
    else:
        rel = next((r for w, r in _RELATION_WORDS.items() if tuple(words[i : i + len(w)]) == w), None)
        if rel is None or a["count"] != 1:
            return None
        second = _noun_phrase(words, i + len(RELATIONS[rel].split()))
        if second is None or second[1] != len(words) or second[0]["count"] != 1:
            return None
        meta = {"tag": "position", "include": [second[0], a | {"position": [rel, 0]}]}
    if caption(meta) != " ".join(words):
        return None
    return meta | {"prompt": " ".join(words)}


def parse_tokens(tokens: torch.Tensor, tokenizer: Tokenizer) -> list[dict | None]:
    """(B, L) token ids -> parsed metadata per row; a row must be words then only padding (0), else None."""
    out = []
    for row in tokens.tolist():
        n = row.index(0) if 0 in row else len(row)
        if any(t != 0 for t in row[n:]) or any(t >= len(tokenizer) for t in row):
            out.append(None)
            continue
        out.append(parse_caption(" ".join(tokenizer.vocab[t] for t in row[:n])))
    return out


def captions_true(images01: torch.Tensor, metas: list[dict | None]) -> torch.Tensor:
    """(B,) bool: caption i parses and the exact evaluator (strict) finds it true of image i (in [0, 1])."""
    ok = torch.zeros(len(metas), dtype=torch.bool)
    idx = [i for i, m in enumerate(metas) if m is not None]
    if idx:
        ok[idx] = evaluate(images01[idx], [metas[i] for i in idx], strict=True).passed
    return ok


def object_multiset(meta: dict) -> list[tuple[str, int]]:
    return sorted((r["class"], int(r.get("count", 1))) for r in meta["include"])


def shuffled_consistency(images01: torch.Tensor, metas: list[dict | None], rounds: int, seed: int = 0) -> float:
    """Mean consistency of the same captions paired with other pairs' images (random derangements:
    a permutation composed with a non-zero cyclic shift, so no caption keeps its own image)."""
    g, n, rates = torch.Generator().manual_seed(seed), len(metas), []
    for _ in range(rounds):
        perm = torch.randperm(n, generator=g)
        shift = int(torch.randint(1, n, (1,), generator=g)) if n > 1 else 0
        partner = perm.roll(shift)  # caption perm[k] goes with image perm[k + shift]
        caps = [None] * n
        for k in range(n):
            caps[int(partner[k])] = metas[int(perm[k])]
        rates.append(float(captions_true(images01, caps).float().mean()))
    return sum(rates) / len(rates)


def first_per_category(prompts: list[dict], k: int) -> list[dict]:
    """The first k prompts of each GenEval category (all when k <= 0); callbacks.geneval has the same
    selection, not imported here so the module does not pull in the FID stack."""
    if k <= 0:
        return list(prompts)
    seen = dict.fromkeys(TAGS, 0)
    out = []
    for p in prompts:
        if seen.get(p["tag"], k) < k:
            out.append(p)
            seen[p["tag"]] += 1
    return out


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))
