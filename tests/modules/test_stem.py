import pytest
import torch

from modules.nets.gene_dit import GeneDiT
from modules.spatial_base import DEFAULT_PATCH_ENCODER
from modules.st_regression import STRegression
from modules.stem import Stem


def test_adaln_zero_starts_at_zero_output():
    net = GeneDiT(n_genes=6, cond_dim=5, width=16, depth=2, heads=2, learn_sigma=True)
    eps, v = net(torch.randn(3, 6), torch.tensor([0, 500, 999]), torch.randn(3, 5))
    assert torch.equal(eps, torch.zeros(3, 6)) and torch.equal(v, torch.zeros(3, 6))


def test_gene_tokens_have_no_positions_so_the_net_is_permutation_equivariant():
    torch.manual_seed(0)
    net = GeneDiT(n_genes=7, cond_dim=4, width=16, depth=2, heads=2)
    for p in net.parameters():  # leave the zero init so the output depends on the input
        torch.nn.init.normal_(p, std=0.2)
    x, n, c = torch.randn(2, 7), torch.tensor([10, 400]), torch.randn(2, 4)
    perm = torch.randperm(7)
    out, _ = net(x, n, c)
    with torch.no_grad():
        net.gene_embed.copy_(net.gene_embed[perm])
    out_perm, _ = net(x[:, perm], n, c)
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-4, atol=1e-5)


def _batch(b=5, g=8):
    return {
        "image": torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8),
        "target": torch.rand(b, g) * 3,
        "index": torch.arange(b),
    }


ENCODER = {**DEFAULT_PATCH_ENCODER, "out_dim": 8, "cnn_width": 8}


def test_stem_sample_shape_nfe_and_loss():
    model = Stem(
        n_genes=8, patch_encoder=ENCODER, stem={"width": 16, "depth": 1, "heads": 2, "sample_steps": 4}
    )
    out = model.sample(3, generator=torch.Generator().manual_seed(0), cond=_batch())
    assert out.x.shape == (3, 5, 8) and out.nfe == 4
    loss = model.compute_loss(_batch(), generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and float(loss) == pytest.approx(1.0, abs=0.5)  # eps-MSE of a zero-initialised net
    with pytest.raises(ValueError, match="module.stem.widht"):
        Stem(n_genes=8, stem={"widht": 3})


def test_regression_samples_are_point_plus_residual_noise():
    model = STRegression(n_genes=8, patch_encoder=ENCODER, regression={"hidden": 16, "num_samples": 4000})
    model.residual_var.fill_(0.25)
    out = model.predict_spots(_batch(), torch.Generator().manual_seed(0))
    assert torch.equal(out["single"], out["point"])
    torch.testing.assert_close(out["samples"].mean(0), out["point"], atol=0.05, rtol=0)
    torch.testing.assert_close(out["samples"].std(0), torch.full((5, 8), 0.5), atol=0.03, rtol=0)


def test_stem_with_learned_variance_trains_and_samples():
    model = Stem(
        n_genes=8,
        patch_encoder=ENCODER,
        stem={"width": 16, "depth": 1, "heads": 2, "sample_steps": 3, "learn_sigma": True},
    )
    loss = model.compute_loss(_batch(), generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and model.net.out.weight.grad is not None
    out = model.sample(2, generator=torch.Generator().manual_seed(0), cond=_batch())
    assert out.x.shape == (2, 5, 8) and bool(torch.isfinite(out.x).all())
