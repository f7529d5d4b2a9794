"""MultimodalDiffusion on a tiny schema: time groups from column names, a finite loss whose noise is
fixed by a generator, and samples / conditional samples with valid shapes and codes."""

import pytest
import torch

from modules.multimodal_diffusion import MultimodalDiffusion, column_groups, hanley_mcneil_se

SCHEMA = {"numeric": ["a", "b"], "categorical": ["y", "c"], "cardinalities": [2, 3], "target": ["cat", 0]}


def test_column_groups():
    assert column_groups(SCHEMA, None) == ([1, 1, 0, 1], 2)
    assert column_groups(SCHEMA, [["a", "y"], ["*"]]) == ([0, 1, 0, 1], 2)
    with pytest.raises(ValueError, match="'zz'"):
        column_groups(SCHEMA, [["zz"], ["*"]])
    with pytest.raises(ValueError, match="'b' is in no time group"):
        column_groups(SCHEMA, [["a", "y", "c"]])


def _module(**kw):
    m = MultimodalDiffusion(hidden=8, depth=1, heads=2, sample_steps=5, **kw)
    m.build(SCHEMA)
    return m


def test_loss_is_finite_and_fixed_by_the_generator():
    m = _module()
    batch = {
        "x": torch.randn(16, 2),
        "cat": torch.stack([torch.randint(0, 2, (16,)), torch.randint(0, 3, (16,))], 1),
        "index": torch.arange(16),
    }
    l1 = m.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    l2 = m.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(l1) and l1 == l2
    l1.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.net.parameters())


def test_sampling_shapes_and_conditioning():
    m = _module(time_mode="shared")
    out = m.sample(7, generator=torch.Generator().manual_seed(0))
    x, c = out.x
    assert x.shape == (7, 2) and c.shape == (7, 2) and out.nfe == 5
    assert (c[:, 0] < 2).all() and (c[:, 1] < 3).all()
    given = (torch.randn(7, 2), torch.tensor([[0, 2]] * 7))
    for replacement in (False, True):
        x, c = m.sample(7, cond=given, generate=[0], replacement=replacement).x
        assert torch.equal(x, given[0]) and (c[:, 1] == 2).all() and (c[:, 0] < 2).all()
    assert 0 < hanley_mcneil_se(0.8, torch.tensor([0, 1] * 50).numpy()) < 0.06
