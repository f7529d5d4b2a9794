"""Prompt sets of Shapes-GenEval: the fixed evaluation set (GenEval's six categories in GenEval's
proportions, 553 prompts) and the training caption distribution, with held-out combinations.

Held-out combinations (never present in a *training* scene, so never in a training caption):

* (shape, colour) pairs ``HELDOUT_PAIRS``: e.g. no green circle is ever drawn in training;
* (shape, count) ``HELDOUT_COUNTS``: four diamonds never appear together;
* (shape A, relation, shape B) ``HELDOUT_RELATIONS``: a triangle is never captioned above a circle
  (nor the circle below the triangle).

An evaluation prompt is marked ``"heldout": true`` when it asks for one of them. The prompt
*strings* of the small categories ("a circle", "three squares") necessarily also occur as
training captions (the grammar has only 4 of the former); the evaluation images are never
training images, and ``heldout`` marks what is compositional generalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.tasks.shapes.grammar import COLORS, RELATIONS, SHAPES, TAGS, caption

# GenEval's 553 prompts: single 80, two objects 99, counting 80, colours 94, position 100,
# colour attribution 100
GENEVAL_COUNTS = {
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("circle", "green"),
    ("square", "purple"),
    ("triangle", "blue"),
    ("diamond", "yellow"),
    ("triangle", "white"),
)
HELDOUT_COUNTS: tuple[tuple[str, int], ...] = (("diamond", 4),)
HELDOUT_RELATIONS: tuple[tuple[str, str, str], ...] = (("triangle", "above", "circle"),)
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
EVAL_PROMPTS_PATH = Path(__file__).with_name("eval_prompts.jsonl")


def single(shape: str, color: str | None = None) -> dict:
    inc = {"class": shape, "count": 1} | ({"color": color} if color else {})
    return {"tag": "colors" if color else "single_object", "include": [inc]}


def pair(a: str, b: str, color_a: str | None = None, color_b: str | None = None) -> dict:
    inc = [
        {"class": a, "count": 1} | ({"color": color_a} if color_a else {}),
        {"class": b, "count": 1} | ({"color": color_b} if color_b else {}),
    ]
    return {"tag": "color_attr" if color_a else "two_object", "include": inc}


def counting(shape: str, n: int, color: str | None = None) -> dict:
    inc = {"class": shape, "count": n} | ({"color": color} if color else {})
    return {"tag": "counting", "include": [inc], "exclude": [{"class": shape, "count": n + 1}]}


def position(a: str, rel: str, b: str, color_a: str | None = None, color_b: str | None = None) -> dict:
    """'A rel B' in GenEval's format: B is group 0, A is placed relative to it."""
    inc = [
        {"class": b, "count": 1} | ({"color": color_b} if color_b else {}),
        {"class": a, "count": 1, "position": [rel, 0]} | ({"color": color_a} if color_a else {}),
    ]
    return {"tag": "position", "include": inc}


def with_caption(meta: dict) -> dict:
    return meta | {"prompt": caption(meta)}


def is_heldout(meta: dict) -> bool:
    """Does the prompt ask for a combination that no training scene contains?"""
    inc = meta["include"]
    if any((r["class"], r.get("color")) in HELDOUT_PAIRS for r in inc):
        return True
    if any((r["class"], int(r.get("count", 1))) in HELDOUT_COUNTS for r in inc):
        return True
    if len(inc) == 2 and "position" in inc[1]:
        a, rel, b = inc[1]["class"], inc[1]["position"][0], inc[0]["class"]
        return (a, rel, b) in HELDOUT_RELATIONS or (b, _INVERSE[rel], a) in HELDOUT_RELATIONS
    return False


def make_eval_prompts(seed: int = 2024) -> list[dict]:
    """The fixed evaluation set (what ``eval_prompts.jsonl`` holds): GenEval's categories and
    proportions, uniform draws over each category's grammar."""
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    def two_shapes():
        a = pick(SHAPES)
        return a, pick([s for s in SHAPES if s != a])

    out = []
    for tag, n in GENEVAL_COUNTS.items():
        for _ in range(n):
            if tag == "single_object":
                meta = single(pick(SHAPES))
            elif tag == "two_object":
                meta = pair(*two_shapes())
            elif tag == "counting":
                meta = counting(pick(SHAPES), int(rng.integers(2, 5)))
            elif tag == "colors":
                meta = single(pick(SHAPES), pick(COLORS))
            elif tag == "position":
                a, b = two_shapes()
                meta = position(a, pick(list(RELATIONS)), b)
            else:
                a, b = two_shapes()
                ca = pick(COLORS)
                meta = pair(a, b, ca, pick([c for c in COLORS if c != ca]))
            out.append(with_caption(meta) | {"heldout": is_heldout(meta)})
    return out


def load_eval_prompts(path: str | Path = EVAL_PROMPTS_PATH, tags: list[str] | None = None) -> list[dict]:
    """Read the evaluation JSONL (one GenEval metadata dict per line), optionally only some tags."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Shapes-GenEval prompt file {path} not found (expected JSONL of metadata)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, r in enumerate(rows):
        if "include" not in r or "tag" not in r or "prompt" not in r:
            raise ValueError(f"{path}:{i + 1}: each line needs 'tag', 'prompt' and 'include'")
    return [r for r in rows if tags is None or r["tag"] in tags]


def subset_per_category(prompts: list[dict], k: int) -> list[dict]:
    """The first k prompts of each category (all when k <= 0), in the file's order."""
    if k <= 0:
        return list(prompts)
    out, seen = [], {t: 0 for t in TAGS}
    for p in prompts:
        if seen[p["tag"]] < k:
            out.append(p)
            seen[p["tag"]] += 1
    return out


def sample_training_metadata(
    rng: np.random.Generator, p_color: float = 0.7, allow_heldout: bool = False
) -> dict:
    """One training caption's metadata. Kinds: one object (30%), two objects (20%), a counted group
    of one shape (20%), two objects in a relation (30%); colours named with prob ``p_color``.
    Never asks for a held-out combination (resampled until it does not) unless ``allow_heldout``
    (the validation/test scene distribution)."""
    while True:
        u = rng.random()
        named = rng.random() < p_color
        s = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:2]]
        c = [COLORS[i] for i in rng.choice(len(COLORS), 2, replace=False)] if named else [None, None]
        if u < 0.3:
            meta = single(s[0], c[0])
        elif u < 0.5:
            meta = pair(s[0], s[1], c[0], c[1])
        elif u < 0.7:
            meta = counting(s[0], int(rng.integers(2, 5)), c[0])
        else:
            meta = position(s[0], list(RELATIONS)[int(rng.integers(4))], s[1], c[0], c[1])
        if allow_heldout or not is_heldout(meta):
            return with_caption(meta) | {"heldout": is_heldout(meta)}


def write_eval_prompts(path: str | Path = EVAL_PROMPTS_PATH, seed: int = 2024) -> None:
    Path(path).write_text("".join(json.dumps(m) + "\n" for m in make_eval_prompts(seed)))


if __name__ == "__main__":
    write_eval_prompts()
    print(f"wrote {EVAL_PROMPTS_PATH}")
