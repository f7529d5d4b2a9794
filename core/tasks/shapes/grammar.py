"""The Shapes-GenEval vocabulary: shapes, named colours, counts, relations, the caption grammar
and a word-level tokeniser built from it.

Captions are produced from a prompt's *metadata* (GenEval's format)::

    {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                       {"class": "square", "count": 1, "color": "blue"}]}
    -> "a red circle and a blue square"

    {"tag": "position", "include": [{"class": "square", "count": 1},
                                     {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    -> "a circle to the left of a square"

In GenEval's position format the *second* include entry is placed relative to group 0, so the
caption names it first. A count requirement with an ``exclude`` of ``count + 1`` means "exactly".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}

# RGB in [0, 1]. Chosen so that the closest pair (orange, yellow / red, orange) is >= 0.45 apart
# in RGB and every colour is >= 0.8 from the dark background: nearest-colour segmentation then
# survives blur, jitter and the colour errors of a small generator.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.10, 0.10),
    "orange": (1.00, 0.52, 0.02),
    "yellow": (0.95, 0.95, 0.10),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.28, 0.95),
    "purple": (0.62, 0.18, 0.90),
    "white": (0.96, 0.96, 0.96),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
NUMBERS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS: dict[str, str] = {  # GenEval relation name -> caption phrase
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(shape: str, color: str | None = None, count: int = 1) -> str:
    """'a red circle', 'an orange square', 'a circle', 'three red squares', 'two circles'."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if color is not None and color not in PALETTE:
        raise ValueError(f"unknown colour {color!r}; expected one of {COLORS}")
    if count not in NUMBERS:
        raise ValueError(f"count must be in {sorted(NUMBERS)}, got {count}")
    words = ([color] if color else []) + [shape if count == 1 else PLURALS[shape]]
    head = _article(words[0]) if count == 1 else NUMBERS[count]
    return " ".join([head, *words])


def caption(metadata: dict) -> str:
    """The caption of a prompt's metadata (see module docstring)."""
    include = metadata.get("include")
    if not include:
        raise ValueError(f"metadata needs a non-empty 'include' list, got {metadata!r}")
    phrases = [noun_phrase(r["class"], r.get("color"), int(r.get("count", 1))) for r in include]
    if len(include) == 2 and "position" in include[1]:
        rel = include[1]["position"][0]
        if rel not in RELATIONS:
            raise ValueError(f"unknown relation {rel!r}; expected one of {list(RELATIONS)}")
        return f"{phrases[1]} {RELATIONS[rel]} {phrases[0]}"
    return " and ".join(phrases)


class Tokenizer:
    """Word-level tokeniser over the grammar's closed vocabulary.

    ``encode(captions) -> (B, max_len)`` long tensor, 0 = padding; an unknown word raises (the
    vocabulary is closed, so an unknown word is a bug in the caller, not a rare token)."""

    PAD = "<pad>"

    def __init__(self, max_len: int = 12) -> None:
        words = {"a", "an", "and", "to", "the", "of", "left", "right", "above", "below"}
        words |= set(SHAPES) | set(PLURALS.values()) | set(COLORS) | set(NUMBERS.values())
        self.vocab: list[str] = [self.PAD, *sorted(words)]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise TypeError("encode expects a list of captions, got one string")
        out = torch.zeros(len(captions), self.max_len, dtype=torch.long)
        for i, text in enumerate(captions):
            words = text.lower().split()
            if len(words) > self.max_len:
                raise ValueError(f"caption {text!r} has {len(words)} words > max_len={self.max_len}")
            for j, w in enumerate(words):
                if w not in self.index:
                    raise ValueError(f"word {w!r} of caption {text!r} is not in the Shapes vocabulary")
                out[i, j] = self.index[w]
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [" ".join(self.vocab[int(t)] for t in row if int(t) != 0) for row in tokens]
