"""MMDiT and the text-image Diffuse Everything module: shapes and per-modality time conditioning of the
net, the caption grammar's parse round trip, the consistency metric on hand-built pairs, conditional
sampling that keeps its condition exactly, and the claims on hand-set metrics."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from core.tasks.shapes import render_batch, sample_scene, sample_training_metadata
from core.tasks.shapes.grammar import COLORS, SHAPES, Tokenizer, caption
from core.tasks.shapes.prompts import load_eval_prompts, single
from experiments.multimodal_text_image import claims
from modules.caption_parsing import (
    captions_true,
    first_per_category,
    object_multiset,
    parse_caption,
    parse_tokens,
    shuffled_consistency,
)
from modules.multimodal_text_image import MultimodalTextImage
from modules.nets.mmdit import MMDiT
from suite.results import VariantResult

V = len(Tokenizer())


def _random_net(seed=0, **kw):
    torch.manual_seed(seed)
    net = MMDiT(image_size=16, patch=4, vocab_size=V, text_len=12, hidden=32, depth=2, heads=4, **kw)
    with torch.no_grad():  # adaLN-Zero starts as the identity: randomise so conditioning is visible
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def test_mmdit_shapes_and_patchify_round_trip():
    net = _random_net()
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(net.unpatchify(net.patchify(x)), x)
    eps, logits = net(x, torch.randint(0, V + 1, (3, 12)), torch.rand(3, 2))
    assert eps.shape == (3, 3, 16, 16) and logits.shape == (3, 12, V)
    with pytest.raises(ValueError, match="times"):
        net(x, torch.zeros(3, 12, dtype=torch.long), torch.rand(3))
    with pytest.raises(ValueError, match="images"):
        net(torch.randn(3, 3, 8, 8), torch.zeros(3, 12, dtype=torch.long), torch.rand(3, 2))


def test_each_modality_time_changes_the_output():
    net = _random_net()
    x, tok = torch.randn(2, 3, 16, 16), torch.randint(0, V, (2, 12))
    t = torch.tensor([[0.3, 0.2], [0.7, 0.9]])
    e0, l0 = net(x, tok, t)
    for col in (0, 1):
        t2 = t.clone()
        t2[:, col] += 0.1
        e1, l1 = net(x, tok, t2)
        assert (e1 - e0).abs().max() > 1e-3 and (l1 - l0).abs().max() > 1e-3
    # examples do not interact: changing example 1's time leaves example 0 exactly alone
    t3 = t.clone()
    t3[1, 1] = 0.0
    e3, l3 = net(x, tok, t3)
    assert torch.equal(e3[0], e0[0]) and torch.equal(l3[0], l0[0])


def test_masking_a_caption_token_is_seen_by_both_streams():
    net = _random_net()
    x, tok, t = torch.randn(1, 3, 16, 16), torch.randint(1, V, (1, 12)), torch.rand(1, 2)
    masked = tok.clone()
    masked[0, 4] = net.mask_id  # the mask id V is a valid input (not an output class)
    e0, l0 = net(x, tok, t)
    e1, l1 = net(x, masked, t)
    assert (e1 - e0).abs().max() > 1e-4  # joint attention: the image stream sees the caption
    assert (l1 - l0).abs().max() > 1e-4
    with pytest.raises(IndexError):
        net(x, torch.full((1, 12), V + 1), t)


def _metas(n, seed=0, allow_heldout=True):
    rng = np.random.default_rng(seed)
    return [sample_training_metadata(rng, 0.7, allow_heldout=allow_heldout) for _ in range(n)]


def test_caption_parse_round_trip_on_the_grammar():
    metas = _metas(400) + load_eval_prompts()
    for m in metas:
        p = parse_caption(m["prompt"])
        assert p is not None, m["prompt"]
        assert p["include"] == m["include"] and p.get("exclude") == m.get("exclude"), m["prompt"]
        assert p["tag"] == m["tag"]
    tok = Tokenizer()
    parsed = parse_tokens(tok.encode([m["prompt"] for m in metas[:50]]), tok)
    assert [p["prompt"] for p in parsed] == [m["prompt"] for m in metas[:50]]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "circle",
        "a circle and",
        "an circle",
        "a orange square",
        "two circle",
        "a circles",
        "a red",
        "a circle above two squares",
        "two circles to the left of a square",
        "a circle to the of a square",
        "a circle and a square and",
        "a red blue circle",
        "one circle",
    ],
)
def test_parse_rejects_what_the_grammar_cannot_say(text):
    assert parse_caption(text) is None


def test_parse_tokens_rejects_padding_inside_a_caption_and_the_mask():
    tok = Tokenizer()
    ids = tok.encode(["a red circle"])
    gap = ids.clone()
    gap[0, 1], gap[0, 2], gap[0, 3] = 0, ids[0, 1], ids[0, 2]  # "a <pad> red circle"
    masked = ids.clone()
    masked[0, 5] = len(tok)  # a mask token left in the padding
    assert parse_tokens(ids, tok)[0]["include"] == [{"class": "circle", "count": 1, "color": "red"}]
    assert parse_tokens(gap, tok) == [None] and parse_tokens(masked, tok) == [None]


def _render(metas, seed=0):
    rng = np.random.default_rng(seed)
    return render_batch([sample_scene(m, rng, 32) for m in metas])


def test_consistency_of_true_and_shuffled_captions():
    metas = _metas(60, seed=1)
    images = _render(metas, seed=2)
    parsed = [parse_caption(m["prompt"]) for m in metas]
    assert captions_true(images, parsed).all()  # true captions of rendered scenes: 1.0
    assert shuffled_consistency(images, parsed, rounds=3) < 0.3
    # distinct coloured single objects: no shuffled caption can be true
    distinct = [single(s, c) for s in SHAPES for c in COLORS[:4]]
    distinct = [m | {"prompt": caption(m)} for m in distinct]
    imgs = _render(distinct, seed=3)
    caps = [parse_caption(m["prompt"]) for m in distinct]
    assert captions_true(imgs, caps).float().mean() == 1.0
    assert shuffled_consistency(imgs, caps, rounds=4) == 0.0
    # an unparsable caption counts as wrong
    assert not captions_true(imgs[:2], [None, caps[1]])[0]


def test_object_multiset_compares_objects_not_wording():
    a = parse_caption("a red circle to the left of a square")
    b = parse_caption("a square and a circle")
    c = parse_caption("two circles")
    assert object_multiset(a) == object_multiset(b) != object_multiset(c)


def test_first_per_category():
    prompts = load_eval_prompts()
    sub = first_per_category(prompts, 2)
    assert len(sub) == 12 and len({p["tag"] for p in sub}) == 6
    assert len(first_per_category(prompts, 0)) == len(prompts) == 553


def _module(**kw):
    torch.manual_seed(0)
    return MultimodalTextImage(hidden=16, depth=1, heads=2, sample_steps=4, text_steps=3, **kw)


def test_conditional_sampling_keeps_the_condition_exactly():
    m = _module()
    tok = Tokenizer().encode(["a red circle", "two squares", "a circle above a square"])
    g = torch.Generator().manual_seed(0)
    out = m.sample(3, generator=g, cond=tok, guidance=2.0)
    assert torch.equal(out.x[1], tok) and out.x[0].shape == (3, 3, 32, 32)
    assert out.nfe > 4  # guidance adds the unconditional branch inside the window
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    out = m.sample(3, generator=g, cond=images, steps=3)  # confidence decoder: 4 tokens per step
    assert torch.equal(out.x[0], images) and (out.x[1] != m.net.mask_id).all() and out.nfe == 3
    m.hparams.text_decoder = "ancestral"
    out = m.sample(3, generator=g, cond=images, steps=3)
    assert torch.equal(out.x[0], images) and (out.x[1] != m.net.mask_id).all()
    joint = m.sample(2, generator=g)
    assert (joint.x[1] != m.net.mask_id).all() and joint.x[0].abs().max() <= 1.0  # clip_x0 = 1
    captions = m.sample(3, generator=torch.Generator().manual_seed(0), cond=["a red circle", "two squares",
                                                                          "a circle above a square"])
    assert torch.equal(captions.x[1], tok)  # caption strings are tokenized into the same condition
    with pytest.raises(TypeError, match="unknown options"):
        m.sample(3, tokens=tok)


def test_loss_is_finite_and_keyed_by_example_index():
    m = _module()
    tok = Tokenizer().encode(["a red circle"] * 4)
    batch = {"x": torch.rand(4, 3, 32, 32) * 2 - 1, "tokens": tok, "index": torch.arange(4)}
    l1, l2 = m.compute_loss(batch), m.compute_loss(batch)
    assert torch.isfinite(l1) and torch.equal(l1, l2)
    l1.backward()
    assert all(p.grad is not None for p in m.net.blocks.parameters())
    with pytest.raises(ValueError, match="max_len"):
        m.compute_loss(batch | {"tokens": tok[:, :8]})


def _cfg():
    return OmegaConf.create(
        {
            "module": {
                "shuffle_rounds": 5,
                "sample_steps": 30,
                "guidance": 2.0,
                "guidance_time": 1.0,
                "guidance_window": [0.1, 0.9],
            }
        }
    )


def _metrics(cons, shuf, base, guided, se=0.02):
    return {
        f"test/{k}": v
        for k, v in {
            "joint/consistency": cons,
            "joint/consistency_se": 0.03,
            "joint/shuffled": shuf,
            "joint/shuffled_se": 0.01,
            "joint/parse_rate": 0.9,
            "joint/n": 256.0,
            "t2i/geneval": base,
            "t2i/geneval_se": se,
            "t2i_guided/geneval": guided,
            "t2i_guided/geneval_se": se,
            "t2i/n_prompts": 553.0,
        }.items()
    }


def test_claims_on_hand_set_metrics():
    good = claims({"main": VariantResult("main", _metrics(0.30, 0.10, 0.20, 0.30), None)}, _cfg())
    assert good["joint_consistency"].holds and good["noisy_guidance_helps"].holds
    bad = claims({"main": VariantResult("main", _metrics(0.19, 0.10, 0.20, 0.22), None)}, _cfg())
    assert not bad["joint_consistency"].holds  # 0.19 < 2 x 0.10
    assert not bad["noisy_guidance_helps"].holds  # +0.02 < se of the difference 0.028
    none = claims({"main": VariantResult("main", {}, None)}, _cfg())
    assert not none["joint_consistency"].holds and none["joint_consistency"].value is None


def test_v_prediction_gives_exact_eps_when_the_net_is_exact():
    """eps_hat = sigma x_t + a v_hat recovers eps exactly when v_hat = a eps - sigma x0."""
    m = _module(prediction="v")
    vp = m.process.continuous
    x0, eps = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 3, 32, 32)
    t = torch.tensor([[0.05, 0.0], [0.3, 0.5], [0.7, 1.0], [1.0, 0.2]])
    a, s = vp.alpha(t[:, 0]).view(-1, 1, 1, 1), vp.sigma(t[:, 0]).view(-1, 1, 1, 1)
    tok = Tokenizer().encode(["a circle"] * 4)
    m.net.forward = lambda img, tokens, tt: (a * eps - s * x0, torch.zeros(4, 12, V))
    out, _ = m((a * x0 + s * eps, tok), t)
    assert torch.allclose(out, eps, atol=1e-5)


def test_default_image_loss_is_the_v_mse_so_high_noise_is_trained():
    """With the v head the default image loss is ||v_hat - v||^2 (= eps-MSE / a_t^2), not the eps-MSE:
    the eps-MSE of a v head weights it by a_t^2 (1.6e-3 at t = 0.8), so the 800-step run never learnt
    x0 at high noise (x0-MSE there worse than the data mean, caption ignored)."""
    m = _module(p_condition=0.0, p_equal=0.0)
    B = 6
    x0 = torch.rand(B, 3, 32, 32) * 2 - 1
    batch = {"x": x0, "tokens": Tokenizer().encode(["a red circle"] * B), "index": torch.arange(B)}
    v_hat = torch.randn(B, 3, 32, 32)
    m.net.forward = lambda img, tokens, tt: (v_hat, torch.zeros(B, 12, V))
    m.compute_loss(batch, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in compute_loss's order
    u = torch.rand(B, 4, generator=g)
    eps = torch.randn(B, 3, 32, 32, generator=g)
    t = m.process.draw_times(u)[:, 0].view(-1, 1, 1, 1)
    assert float(t.max()) > 0.6  # some examples at high noise, where the weighting matters
    vp = m.process.continuous
    v = vp.alpha(t) * eps - vp.sigma(t) * x0
    expected = (v_hat - v).pow(2).flatten(1).mean(1).mean()
    assert torch.allclose(m._parts[0], expected, rtol=1e-4)
    m_eps = _module(p_condition=0.0, p_equal=0.0, image_loss="eps")  # the paper's eps-MSE stays available
    m_eps.net.forward = m.net.forward
    m_eps.compute_loss(batch, torch.Generator().manual_seed(3))
    expected_eps = (vp.alpha(t) ** 2 * (v_hat - v).pow(2)).flatten(1).mean(1).mean()
    assert torch.allclose(m_eps._parts[0], expected_eps, rtol=1e-4)
