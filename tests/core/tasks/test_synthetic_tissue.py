import math

import pytest
import torch

from core.tasks.synthetic_tissue import (
    TissueModel,
    _nb_sample,
    bayes_optimal_errors,
    conditional_moments,
    crop_patches,
    mean_counts,
    render_slide,
    sample_conditional,
    spot_composition,
    spot_grid,
    state_probability,
)


@pytest.fixture(scope="module")
def model():
    return TissueModel.random(n_genes=24, seed=3)


def test_model_is_seeded_and_names_housekeeping_genes(model):
    again = TissueModel.random(n_genes=24, seed=3)
    assert torch.equal(model.programme, again.programme) and model.gene_names == again.gene_names
    assert sum(n.startswith("MT-") for n in model.gene_names) == 4
    assert sum(n.startswith(("RPL", "RPS")) for n in model.gene_names) == 6
    back = TissueModel.from_arrays(model.gene_names, model.to_arrays())
    assert torch.equal(back.state_effect, model.state_effect)


def test_negative_binomial_draws_have_nb_mean_and_variance():
    gen = torch.Generator().manual_seed(0)
    mean, size = torch.full((200_000,), 6.0), torch.tensor(3.0)
    n = _nb_sample(mean, size, gen)
    assert float(n.mean()) == pytest.approx(6.0, abs=0.05)
    assert float(n.var()) == pytest.approx(6.0 + 36.0 / 3.0, rel=0.03)  # m + m^2 / r


def test_conditional_moments_match_brute_force_pmf(model):
    comp = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.05, 0.8, 0.05, 0.1]])
    got = conditional_moments(model, comp)
    p1 = state_probability(model, comp).double()
    n = torch.arange(1200, dtype=torch.float64)
    y = torch.log2(n + 1)
    for s in range(2):
        mix = 0.0
        for z, w in ((0, 1 - p1[s]), (1, p1[s])):
            m = mean_counts(model, comp[s : s + 1], torch.tensor([z]))[0].double()
            nb = torch.distributions.NegativeBinomial(
                model.dispersion.double(), probs=m / (m + model.dispersion)
            )
            mix = mix + w * nb.log_prob(n[:, None]).exp()  # (M, G)
        mean = (mix * y[:, None]).sum(0)
        var = (mix * y[:, None] ** 2).sum(0) - mean**2
        torch.testing.assert_close(got["mean"][s].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["var"][s].double(), var, rtol=1e-5, atol=1e-6)
        cdf = mix.cumsum(0)
        median = y[(cdf < 0.5).sum(0)]
        torch.testing.assert_close(got["median"][s].double(), median)


def test_conditional_sampler_agrees_with_exact_moments(model):
    comp = torch.tensor([[0.6, 0.2, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]])
    draws = sample_conditional(model, comp, 6000, torch.Generator().manual_seed(1))
    exact = conditional_moments(model, comp)
    se = (exact["var"] / 6000).sqrt()
    assert float(((draws.mean(0) - exact["mean"]).abs() / se).max()) < 5.0
    torch.testing.assert_close(draws.var(0), exact["var"], rtol=0.12, atol=0.02)


def test_bayes_errors_are_attained_and_beaten_by_nothing_simple(model):
    comp = torch.softmax(torch.randn(30, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    bayes = bayes_optimal_errors(model, comp)
    exact = conditional_moments(model, comp)
    # E[(y - c)^2 | pi] = Var + (E[y] - c)^2: a shifted predictor loses exactly 0.3^2
    assert float((exact["var"] + 0.3**2).mean()) == pytest.approx(bayes["bayes_mse"] + 0.09)
    y = sample_conditional(model, comp, 3000, torch.Generator().manual_seed(3))
    assert float(((y - exact["mean"]) ** 2).mean()) == pytest.approx(bayes["bayes_mse"], rel=0.03)
    assert float((y - exact["median"]).abs().mean()) == pytest.approx(bayes["bayes_mae"], rel=0.03)
    assert float((y - exact["mean"]).abs().mean()) >= bayes["bayes_mae"] - 0.005


def test_expression_is_multimodal_given_the_patch(model):
    # the hidden state shifts state genes by |D| >= 1.2 nats: two separated modes for a tumour spot
    comp = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert 0.2 < float(state_probability(model, comp)) < 0.95
    gene = int(model.state_effect.abs().argmax())
    m0 = mean_counts(model, comp, torch.tensor([0]))[0, gene]
    m1 = mean_counts(model, comp, torch.tensor([1]))[0, gene]
    assert abs(math.log(float(m1 / m0))) >= 1.2


def test_spot_grid_patches_fit_and_rows_are_hex_offset():
    centres = spot_grid(100, 120, spacing=16, patch_size=32)
    assert int(centres[:, 0].min()) >= 16 and int(centres[:, 0].max()) <= 120 - 16
    assert int(centres[:, 1].min()) >= 16 and int(centres[:, 1].max()) <= 100 - 16
    rows = centres[:, 1].unique()
    assert (
        int(centres[centres[:, 1] == rows[1], 0].min()) - int(centres[centres[:, 1] == rows[0], 0].min()) == 8
    )
    with pytest.raises(ValueError, match="no spot fits"):
        spot_grid(10, 10, 16, 32)


def test_rendered_tissue_shows_its_composition():
    gen = torch.Generator().manual_seed(5)
    image, field = render_slide(128, 128, gen)
    assert image.dtype == torch.uint8 and image.shape == (128, 128, 3)
    torch.testing.assert_close(field.sum(0), torch.ones(128, 128))
    centres = spot_grid(128, 128, 8, 16)
    patches = crop_patches(image, centres, 16)
    comp = spot_composition(field, centres, 16)
    assert patches.shape == (len(centres), 16, 16, 3)
    torch.testing.assert_close(comp.sum(1), torch.ones(len(centres)))
    # lumen is bright, nuclei-rich tumour/immune is dark: brightness tracks the visible composition
    brightness = patches.float().mean(dim=(1, 2, 3))
    lumen = comp[:, 3]
    corr = torch.corrcoef(torch.stack([brightness, lumen]))[0, 1]
    assert float(corr) > 0.5
