"""MaskedWorldModel: no leakage of the predicted view, masked decoding, losses of all variants,
rollouts from the model's own generations, the self-consistency count."""

import pytest
import torch

from datamodules.gridworld import GridWorldDataModule
from modules.world_model import MaskedWorldModel


@pytest.fixture(scope="module")
def batch():
    dm = GridWorldDataModule(height=10, width=10, steps_out=5, n_train=4, n_val=2, n_test=2, batch_size=4)
    dm.setup()
    ds = dm.train_set
    return {"x": ds.x, "index": torch.arange(len(ds.x)), **ds.extras}


def small(variant):
    torch.manual_seed(0)
    return MaskedWorldModel(variant=variant, width=16, heads=2, depth=1, state_tokens=2, map_size=10,
                            decode_steps=3).eval()


@pytest.mark.parametrize("variant", ["context", "memory", "recurrent"])
def test_predicting_step_t_never_reads_view_t_or_later(batch, variant):
    m = small(variant)
    views, poses = batch["x"], batch["poses"]
    t = 7
    tt = torch.full((len(views), 1), t)
    changed = views.clone()
    changed[:, t:] = (changed[:, t:] + 1) % 8  # alter the predicted view and everything after it
    outs = []
    for v in (views, changed):
        state = m.states(v, poses, upto=t)[:, t] if variant == "recurrent" else None
        src, pad = m.source_tokens(v, poses, batch["memory"], tt, state)
        x = torch.full((len(v), 25), 8)
        outs.append(m.logits(x, batch["actions"][:, t], src, pad, poses[:, t] if variant == "recurrent" else None))
    assert torch.equal(outs[0], outs[1])
    if variant == "memory":  # the retrieved entries are older than the context window
        mem = batch["memory"][:, t]
        assert ((mem < t - m.hparams.context) | (mem == -1)).all()


@pytest.mark.parametrize("variant", ["context", "memory", "recurrent"])
def test_loss_is_finite_and_trains_every_parameter(batch, variant):
    m = small(variant).train()
    loss = m.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and 1.0 < float(loss) < 4.0  # ~log 8 at initialisation
    assert all(p.grad is not None for p in m.parameters())


def test_masked_decoding_with_an_oracle_recovers_the_view_and_counts_calls(batch):
    m = small("memory")
    truth = batch["x"][:, 3]
    m.logits = lambda x, a, src, pad, pose=None: torch.nn.functional.one_hot(truth, 8).float() * 10
    src, pad = torch.zeros(len(truth), 1, 16), torch.zeros(len(truth), 1, dtype=torch.bool)
    out = m.decode(batch["actions"][:, 3], src, pad)
    assert torch.equal(out, truth)
    assert m.nfe.calls == 3  # decode_steps calls of the network


def test_rollout_keeps_view_zero_and_fills_every_tile(batch):
    m = small("memory")
    gen = m.rollout(batch)
    assert torch.equal(gen[:, 0], batch["x"][:, 0])
    assert ((gen >= 0) & (gen < 8)).all()


def test_self_consistency_compares_with_the_models_own_earlier_generation(batch):
    m = small("context")
    poses = batch["poses"]
    world = batch["world"]
    seen = batch["ages"][:, 1:] > 0  # tiles whose map cell an earlier view showed
    gen = batch["x"].clone()  # a perfectly consistent "generation": the true views
    assert m._consistent(gen, poses)[seen].all()
    gen[:, -1] = (gen[:, -1] + 1) % 8  # the last view contradicts everything seen before
    cons = m._consistent(gen, poses)
    assert seen[:, -1].any() and not cons[:, -1][seen[:, -1]].any() and cons[:, :-1][seen[:, :-1]].all()
    assert world.shape[1:] == (10, 10)


def test_claims_read_the_variants_metrics():
    from pathlib import Path

    from omegaconf import OmegaConf

    from experiments.world_model_grid import claims
    from suite.results import VariantResult

    cfg = OmegaConf.create({"data": {"context": 2, "colours": 8, "n_test": 10}})

    def var(name, far, new, cons):
        m = {"test/acc_far": far, "test/acc_far_count": 1000, "test/acc_new": new, "test/acc_new_count": 1000,
             "test/self_consistency": cons, "test/self_consistency_count": 1000}
        return VariantResult(name, m, Path("."))

    good = claims({"context": var("context", 0.13, 0.12, 0.3), "memory": var("memory", 0.95, 0.12, 0.9)}, cfg)
    assert good["memory_keeps_revisits"].holds and good["context_only_forgets"].holds
    assert good["rollouts_self_consistent"].holds
    bad = claims({"context": var("context", 0.7, 0.12, 0.9), "memory": var("memory", 0.85, 0.12, 0.9)}, cfg)
    assert not bad["memory_keeps_revisits"].holds and not bad["context_only_forgets"].holds
    assert not bad["rollouts_self_consistent"].holds
