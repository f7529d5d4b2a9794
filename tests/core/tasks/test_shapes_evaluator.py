"""Validity of the exact Shapes-GenEval evaluator: ground truth passes, noise/blank fail, wrong
renders fail, degraded renders still pass, partial credit matches its formula, and the pieces
(connected components, GenEval's relative position) agree with brute-force references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from core.tasks.shapes import evaluate, geneval_score, ground_truth_images, load_eval_prompts, render_batch
from core.tasks.shapes.evaluator import classify_pixels, connected_components, detect
from core.tasks.shapes.prompts import counting, pair, position, single
from core.tasks.shapes.render import gaussian_blur, relations, sample_scene

FIXTURE = Path(__file__).resolve().parents[3] / "core" / "tasks" / "shapes" / "fixtures"


@pytest.fixture(scope="module")
def prompts():
    return load_eval_prompts()


@pytest.fixture(scope="module")
def truth(prompts):
    return ground_truth_images(prompts, seed=1)


def scene(*objects, size=32):
    objs = [{"shape": s, "color": c, "cx": x, "cy": y, "r": r} for s, c, x, y, r in objects]
    return {"size": size, "background": 0.1, "texture": [0.0] * 16, "objects": objs}


def test_ground_truth_of_every_prompt_passes(prompts, truth):
    scores = geneval_score(truth, prompts)
    assert scores["overall"] >= 0.98
    assert (
        min(
            scores[t] for t in ("single_object", "two_object", "counting", "colors", "position", "color_attr")
        )
        >= 0.95
    )


def test_ground_truth_at_64px_passes(prompts):
    sub = prompts[::5]
    assert geneval_score(ground_truth_images(sub, seed=2, size=64), sub)["overall"] >= 0.98


def test_noise_and_blank_images_fail(prompts):
    g = torch.Generator().manual_seed(0)
    prompts = prompts[::2]  # every category, half the time
    n = len(prompts)
    assert geneval_score(torch.rand(n, 3, 32, 32, generator=g), prompts)["overall"] <= 0.05
    assert geneval_score(torch.full((n, 3, 32, 32), 0.1), prompts)["overall"] <= 0.05
    assert geneval_score(torch.zeros(n, 3, 32, 32), prompts)["overall"] <= 0.05
    smooth = gaussian_blur(torch.rand(n, 3, 32, 32, generator=g), 1.0)
    assert geneval_score(smooth, prompts)["overall"] <= 0.05


@pytest.mark.parametrize("degrade", ["blur", "jitter", "noise", "all"])
def test_degraded_renders_of_correct_scenes_still_pass(prompts, truth, degrade):
    g = torch.Generator().manual_seed(1)
    x = truth
    if degrade in ("blur", "all"):
        x = gaussian_blur(x, 0.6)
    if degrade in ("jitter", "all"):  # per-image channel gains and offsets
        gain = 1 + 0.12 * (torch.rand(len(x), 3, 1, 1, generator=g) * 2 - 1)
        x = x * gain + 0.05 * (torch.rand(len(x), 3, 1, 1, generator=g) * 2 - 1)
    if degrade in ("noise", "all"):
        x = x + 0.05 * torch.randn(x.shape, generator=g)
    assert geneval_score(x.clamp(0, 1), prompts)["overall"] >= 0.97


def test_wrong_renders_fail_their_prompt():
    rng = np.random.default_rng(0)
    cases = []
    for a, b, ca, cb in [
        ("circle", "square", "red", "blue"),
        ("triangle", "diamond", "yellow", "cyan"),
        ("square", "triangle", "white", "purple"),
        ("diamond", "circle", "green", "orange"),
    ]:
        right, wrong = pair(a, b, ca, cb), pair(a, b, cb, ca)  # swapped colours
        cases.append((right, sample_scene(wrong, rng)))
        cases.append((single(a, ca), sample_scene(single(a, cb), rng)))  # wrong colour
        cases.append((single(a), sample_scene(single(b), rng)))  # wrong object
        cases.append((pair(a, b), sample_scene(single(a), rng)))  # a missing object
        for n in (2, 3, 4):  # one too few, one too many
            cases.append((counting(a, n), sample_scene(counting(a, n - 1) if n > 2 else single(a), rng)))
            if n < 4:
                cases.append((counting(a, n), sample_scene(counting(a, n + 1), rng)))
        for rel, flip in [("left of", "right of"), ("above", "below")]:
            cases.append((position(a, rel, b), sample_scene(position(a, flip, b), rng)))
    meta = [c[0] for c in cases]
    ev = evaluate(render_batch([c[1] for c in cases]), meta)
    assert not ev.passed.any(), [meta[i] for i in ev.passed.nonzero().flatten()]
    assert (ev.reward < 1).all()


def test_partial_credit_formula():
    # three circles wanted; two / four drawn -> 1 - 1/3; colours: one of two matches -> 1/2
    two = scene(("circle", "red", 6, 6, 5), ("circle", "red", 24, 6, 5))
    four = scene(*[("circle", "red", x, y, 5) for x in (7, 24) for y in (7, 24)])
    attr = scene(("circle", "red", 7, 16, 5), ("square", "green", 24, 16, 5))
    pos = scene(("circle", "red", 24, 16, 5), ("square", "blue", 7, 16, 5))
    meta = [
        counting("circle", 3),
        counting("circle", 3),
        pair("circle", "square", "red", "blue"),
        position("circle", "left of", "square"),
        position("circle", "right of", "square"),
    ]
    ev = evaluate(render_batch([two, four, attr, pos, pos]), meta, strict=False)
    expected = torch.tensor([2 / 3, 2 / 3, (1 + 1 + 1 + 0) / 4, (1 + 1 + 0) / 3, 1.0])
    assert torch.allclose(ev.reward, expected, atol=1e-6)
    assert torch.equal(ev.scores, ev.reward)
    assert ev.passed.tolist() == [False, False, False, False, True]


def test_strict_pass_iff_full_reward(prompts, truth):
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(len(prompts), generator=g)
    mixed = torch.cat([truth[:200], truth[perm[:200]]])
    meta = prompts[:200] + prompts[:200]
    ev = evaluate(mixed, meta)
    assert torch.equal(ev.passed, ev.reward == 1)
    assert 0 < ev.passed.float().mean() < 1


def test_text_ignoring_floor_is_low(prompts, truth):
    """A perfect generator that ignores the text: its images judged against other captions."""
    g = torch.Generator().manual_seed(0)
    floors = [
        geneval_score(truth[torch.randperm(len(prompts), generator=g)], prompts)["overall"] for _ in range(3)
    ]
    assert 0.03 < float(np.mean(floors)) < 0.3


def test_connected_components_match_scipy():
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(-1, 3, (6, 20, 20), generator=g)
    labels = connected_components(classes)
    for b in range(len(classes)):
        ours = labels[b].numpy()
        for c in range(3):
            ref, n = ndimage.label(classes[b].numpy() == c, structure=np.ones((3, 3)))
            for k in range(1, n + 1):
                vals = np.unique(ours[ref == k])
                assert len(vals) == 1 and vals[0] > 0  # one label per component ...
            assert len(np.unique(ours[(classes[b] == c).numpy()])) == n  # ... and distinct labels
        assert (ours[(classes[b] < 0).numpy()] == 0).all()


def test_relations_match_geneval_reference():
    def geneval(box_a, box_b, threshold=0.1):  # transcription of GenEval's relative_position
        boxes = np.array([box_a, box_b]).reshape(2, 2, 2)
        center_a, center_b = boxes.mean(axis=-2)
        dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
        offset = center_a - center_b
        revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
        if np.all(np.abs(revised) < 1e-3):
            return set()
        dx, dy = revised / np.linalg.norm(offset)
        return {
            n
            for n, ok in [
                ("left of", dx < -0.5),
                ("right of", dx > 0.5),
                ("above", dy < -0.5),
                ("below", dy > 0.5),
            ]
            if ok
        }

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 32, (500, 2, 2))
    size = rng.uniform(2, 12, (500, 2, 2))
    a = torch.tensor(np.concatenate([xy[:, 0], xy[:, 0] + size[:, 0]], 1), dtype=torch.float64)
    b = torch.tensor(np.concatenate([xy[:, 1], xy[:, 1] + size[:, 1]], 1), dtype=torch.float64)
    ours = relations(a, b)
    names = ["left of", "right of", "above", "below"]
    for i in range(500):
        assert {names[k] for k in range(4) if ours[i, k]} == geneval(a[i].numpy(), b[i].numpy())


def test_detect_reads_shapes_colours_and_boxes():
    img = render_batch([scene(("triangle", "orange", 8, 8, 5), ("diamond", "cyan", 24, 24, 6))])
    det = detect(img)
    assert det.describe(0) in ("orange triangle, cyan diamond", "cyan diamond, orange triangle")
    assert torch.allclose(det.box.sort(0).values[:, 0], torch.tensor([3.0, 18.0]), atol=1)
    assert classify_pixels(torch.full((1, 3, 2, 2), 0.5))[0].eq(-1).all()  # mid grey: no colour


def test_bad_input_raises():
    with pytest.raises(ValueError, match="prompts"):
        evaluate(torch.zeros(2, 3, 32, 32), [single("circle")])
    with pytest.raises(ValueError, match="unknown class"):
        evaluate(torch.zeros(1, 3, 32, 32), [{"tag": "single_object", "include": [{"class": "cat"}]}])
    with pytest.raises(ValueError, match="shape"):
        evaluate(torch.zeros(1, 32, 32), [single("circle")])


def test_regression_fixture_of_model_outputs():
    """Twelve real outputs of the default t2i_shapes model (step 1800, w=3), checked by eye against
    model_outputs.png, verdicts frozen (fixtures/make_fixture.py). By eye all 12 are failures of the
    prompt except two borderline ones where the evaluator is stricter than the eye: a soft-cornered
    yellow "square" read as a circle (#1) and an orange "square" read as a triangle (#12); a ragged
    white square is read as a circle in #10, whose verdict is still right (the relation is wrong).
    Those are the first (centroid) reader's verdicts (the png's captions), which read almost every
    blob as a circle. The default (net) reader, trained on degraded renders, is frozen as
    ``passed_net``; by eye it reads #5's purple diamond, #10's white square and #12's orange square
    right, #10's cyan circle wrong (a diamond), and still reads #1's square as a circle. It passes three:
    #3 (an orange square and a round white-cyan blob for "a circle and a square": by eye defensible),
    #4 (a small green blob with a pointed top as the triangle: generous) and #8 (a tilted, irregular
    blue blob as "a blue square": generous)."""
    meta_path = FIXTURE / "model_outputs.jsonl"
    rows = [json.loads(line) for line in meta_path.read_text().splitlines()]
    images = torch.load(FIXTURE / "model_outputs.pt", weights_only=True).float() / 255
    ev = evaluate(images, [r["metadata"] for r in rows], reader="centroid")
    assert ev.passed.tolist() == [r["passed"] for r in rows]
    assert torch.allclose(ev.reward, torch.tensor([r["reward"] for r in rows]), atol=1e-6)
    ev = evaluate(images, [r["metadata"] for r in rows])
    assert ev.passed.tolist() == [r["passed_net"] for r in rows]
    assert torch.allclose(ev.reward, torch.tensor([r["reward_net"] for r in rows]), atol=1e-6)
