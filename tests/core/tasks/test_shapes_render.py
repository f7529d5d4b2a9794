"""Shapes grammar, tokeniser, renderer, layout sampler and the evaluation prompt set."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from core.tasks.shapes import Tokenizer, caption, render_batch, render_scene, sample_scene
from core.tasks.shapes.prompts import (
    EVAL_PROMPTS_PATH,
    GENEVAL_COUNTS,
    HELDOUT_PAIRS,
    counting,
    is_heldout,
    load_eval_prompts,
    make_eval_prompts,
    pair,
    position,
    sample_training_metadata,
    single,
)
from core.tasks.shapes.render import _relation_exact, object_box, relations


def test_captions_follow_the_grammar():
    assert caption(single("circle", "red")) == "a red circle"
    assert caption(single("square", "orange")) == "an orange square"
    assert caption(counting("triangle", 3)) == "three triangles"
    assert caption(counting("diamond", 2, "blue")) == "two blue diamonds"
    assert caption(pair("circle", "square", "red", "blue")) == "a red circle and a blue square"
    assert caption(position("circle", "left of", "triangle")) == "a circle to the left of a triangle"
    with pytest.raises(ValueError, match="unknown shape"):
        caption(single("cat"))


def test_tokenizer_round_trip_and_closed_vocabulary():
    tok = Tokenizer()
    texts = ["a red circle to the left of a yellow triangle", "four diamonds", "an orange square"]
    codes = tok.encode(texts)
    assert codes.shape == (3, 12) and codes.dtype == torch.long
    assert tok.decode(codes) == texts
    assert (codes[1, 2:] == 0).all()
    with pytest.raises(ValueError, match="'dog'"):
        tok.encode(["a red dog"])
    with pytest.raises(TypeError):
        tok.encode("a circle")


def test_render_is_exact_geometry():
    s = {
        "size": 32,
        "background": 0.1,
        "texture": [0.0] * 16,
        "objects": [
            {"shape": "square", "color": "red", "cx": 8.0, "cy": 8.0, "r": 4.0},
            {"shape": "circle", "color": "blue", "cx": 22.5, "cy": 22.5, "r": 5.0},
        ],
    }
    img = render_scene(s)
    red = (img - torch.tensor([0.92, 0.10, 0.10]).view(3, 1, 1)).abs().amax(0) < 1e-6
    blue = (img - torch.tensor([0.15, 0.28, 0.95]).view(3, 1, 1)).abs().amax(0) < 1e-6
    assert int(red.sum()) == 64  # pixel centres 4.5..11.5: 8 x 8
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    assert torch.equal(blue, (xs - 22.5) ** 2 + (ys - 22.5) ** 2 <= 25)
    assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1


def test_render_is_deterministic_from_seed():
    meta = pair("circle", "square", "red", "blue")
    assert torch.equal(render_scene(meta, seed=3), render_scene(meta, seed=3))
    assert not torch.equal(render_scene(meta, seed=3), render_scene(meta, seed=4))


def test_layouts_keep_gaps_and_relations():
    rng = np.random.default_rng(0)
    for _ in range(200):
        meta = sample_training_metadata(rng)
        s = sample_scene(meta, rng, forbidden=HELDOUT_PAIRS)
        objs = s["objects"]
        assert len(objs) == sum(r["count"] for r in meta["include"])
        for i in range(len(objs)):
            for j in range(i):
                a, b = objs[i], objs[j]
                gap = max(abs(a["cx"] - b["cx"]) - a["r"] - b["r"], abs(a["cy"] - b["cy"]) - a["r"] - b["r"])
                assert gap >= 2.0
        assert all((o["shape"], o["color"]) not in HELDOUT_PAIRS for o in objs)
        assert not meta["heldout"]


def test_scalar_relation_matches_vectorised():
    rng = np.random.default_rng(1)
    names = ["left of", "right of", "above", "below"]
    for _ in range(300):
        a = {"cx": rng.uniform(0, 32), "cy": rng.uniform(0, 32), "r": rng.uniform(2, 7)}
        b = {"cx": rng.uniform(0, 32), "cy": rng.uniform(0, 32), "r": rng.uniform(2, 7)}
        vec = relations(
            torch.tensor([object_box(a)], dtype=torch.float64),
            torch.tensor([object_box(b)], dtype=torch.float64),
        )[0]
        for k, name in enumerate(names):
            assert _relation_exact(a, b, name) == (bool(vec[k]) and int(vec.sum()) == 1)


def test_eval_prompt_file_is_the_generated_set():
    rows = load_eval_prompts()
    assert rows == make_eval_prompts()
    assert Counter(r["tag"] for r in rows) == Counter(GENEVAL_COUNTS)
    assert len(rows) == 553
    assert all(r["heldout"] == is_heldout(r) for r in rows)
    assert all(caption(r) == r["prompt"] for r in rows)
    held = [r for r in rows if r["heldout"]]
    assert 40 <= len(held) <= 150 and {r["tag"] for r in held} >= {"colors", "color_attr"}
    assert EVAL_PROMPTS_PATH.name == "eval_prompts.jsonl"


def test_held_out_combinations_never_reach_training():
    rng = np.random.default_rng(2)
    metas = [sample_training_metadata(rng) for _ in range(3000)]
    assert not any(is_heldout(m) for m in metas)
    pairs = {(r["class"], r.get("color")) for m in metas for r in m["include"]}
    assert not pairs & set(HELDOUT_PAIRS)
    # but every other (shape, colour) pair is named in training
    assert len({p for p in pairs if p[1] is not None}) == 32 - len(HELDOUT_PAIRS)
    mix = Counter(("colour" if any("color" in r for r in m["include"]) else "plain") for m in metas)
    # p_color = 0.7 before rejecting held-out pairs, which only colour-named captions can hit
    assert 0.62 < mix["colour"] / len(metas) < 0.70


def test_batch_render_matches_single_renders():
    rng = np.random.default_rng(5)
    scenes = [sample_scene(sample_training_metadata(rng), rng) for _ in range(10)]
    batch = render_batch(scenes)
    for i, s in enumerate(scenes):
        assert torch.equal(batch[i], render_scene(s))
