"""ShapesDataModule splits and the TextToImage model: loss, guidance, samplers, the SDE's marginals."""

from __future__ import annotations

import pytest
import torch

from core.diffusion.flow import linear_sde
from core.diffusion.solvers import euler_maruyama, time_grid
from datamodules.shapes import ShapesDataModule
from modules.t2i import DEFAULT_TEXT_ENCODER, DEFAULT_UNET, TextToImage


@pytest.fixture(scope="module")
def data():
    dm = ShapesDataModule(n_train=256, n_val=128, n_test=64, batch_size=16, seed=3)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TextToImage(unet={**DEFAULT_UNET, "base": 8, "attn_levels": 1},
                       text_encoder={**DEFAULT_TEXT_ENCODER, "dim": 16, "depth": 1}, sample_steps=2)


def test_datamodule_batches_and_splits(data):
    b = next(iter(data.train_dataloader()))
    assert b["x"].shape == (16, 3, 32, 32) and -1 <= b["x"].min() and b["x"].max() <= 1
    assert b["tokens"].shape == (16, 12) and b["index"].dtype == torch.long
    assert not data.train_set.extras["heldout"].any()
    assert data.val_set.extras["heldout"].any()  # the full distribution, held-out combinations included
    assert data.tokenizer.decode(data.train_set.extras["tokens"][:5]) == data.captions("train")[:5]
    again = ShapesDataModule(n_train=256, n_val=128, n_test=64, seed=3)
    again.setup()
    assert torch.equal(again.train_tensor(), data.train_tensor())
    with pytest.raises(ValueError, match="size"):
        ShapesDataModule(size=24)


def test_loss_is_keyed_and_finite(model, data):
    b = next(iter(data.train_dataloader()))
    assert torch.equal(model.compute_loss(b), model.compute_loss(b))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(model.compute_loss(b, g1), model.compute_loss(b, g2))
    assert torch.isfinite(model.compute_loss(b))


def test_guidance_combines_two_passes(model):
    tokens = model.tokenizer.encode(["a red circle", "two squares"])
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v_c = model(x, t, tokens, use_ema=True)
        v_0 = model(x, t, torch.zeros_like(tokens), use_ema=True)
        for w in (1.0, 3.0):
            got = model.guided_velocity(tokens, w)(x, t)
            assert torch.allclose(got, v_0 + w * (v_c - v_0), atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "em"])
def test_generate_shapes_range_and_determinism(model, sampler):
    prompts = [
        "a red circle",
        {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}]},
    ]
    a = model.generate(prompts, steps=2, solver=sampler, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompts, steps=2, solver=sampler, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)


def test_sde_keeps_the_flow_marginals(model):
    """Data x0 ~ N(0, s^2): the exact velocity is linear, E[eps - x0 | x_t] = (t - (1-t) s^2) x / var_t;
    the reverse SDE with g(t) = a t (core.diffusion.flow.linear_sde, the model's ``em`` solver) started
    from N(0, 1) must end at N(0, s^2)."""
    s = 0.5

    def velocity(x, t):
        tt = t.view(-1, 1)
        return (tt - (1 - tt) * s**2) / ((1 - tt) ** 2 * s**2 + tt**2) * x

    drift, diffusion = linear_sde(velocity, model.hparams.sde_noise)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    out = euler_maruyama(
        x, time_grid(1.0, 0.0, 400).double(), drift=drift, diffusion=diffusion, generator=g
    ).x
    assert abs(float(out.std()) - s) < 0.02 and abs(float(out.mean())) < 0.02


def test_caption_dropout_rate(model, data):
    """The keyed uniform that drops captions fires at rate cond_drop (binomial 4-sigma band)."""
    index = torch.arange(20000)
    u = model.example_uniform(index, (1,), stream=2)[:, 0]
    rate = float((u < model.hparams.cond_drop).float().mean())
    assert abs(rate - 0.1) < 4 * (0.1 * 0.9 / 20000) ** 0.5
