"""DiffusionSampler: oracle accounting of the self-consistency loss, unbiased evaluation with an
untrained score, and a short fit that lowers the score error on a Gaussian with a known score."""

import math

import lightning as L
import pytest
import torch

from modules.diffusion_sampler import DiffusionSampler


def test_loss_counts_oracle_calls_and_backpropagates():
    m = DiffusionSampler(
        target="gaussian",
        target_kwargs={"dim": 2},
        hidden=16,
        depth=1,
        steps=5,
        train_chains=4,
        train_points=12,
        train_snis_samples=8,
    )
    loss = m.compute_loss(generator=torch.Generator().manual_seed(0))
    assert m.counter.items == 12 * 8  # one V per SNIS proposal
    loss.backward()
    assert all(p.grad is not None for p in m.net.parameters())
    assert m.nfe.items == 4 * 5  # network evaluations of the no-grad rollout


def test_untrained_score_still_gives_unbiased_z_on_a_gaussian():
    torch.manual_seed(0)  # the network's random init is the (arbitrary) score under test
    m = DiffusionSampler(
        target="gaussian",
        target_kwargs={"dim": 1, "weight": 3.0},
        hidden=8,
        depth=1,
        T=1.0,
        steps=10,
        eval_chains=500,
        eval_repeats=20,
    )
    metrics = m._evaluate("test", seed=0)
    half = 1.96 * metrics["test/z_ratio_std"] / math.sqrt(20)
    assert abs(metrics["test/z_ratio_mean"] - 1) < half + 0.02, metrics
    assert metrics["test/oracle_calls_per_chain"] == 1.0


@pytest.mark.slow
def test_self_consistency_training_reduces_score_error():
    torch.manual_seed(0)
    m = DiffusionSampler(
        target="gaussian",
        target_kwargs={"dim": 2, "mean": 2.0},
        hidden=64,
        depth=2,
        lr=3e-3,
        steps=20,
        train_chains=32,
        train_points=256,
        train_snis_samples=64,
    )
    gmm = m.target
    x = torch.randn(512, 2, dtype=torch.float64) + 1.0
    t = 0.3

    def err():
        with torch.no_grad():
            return float((m.score(x, t) - gmm.noised_score(x, t)).norm(dim=1).mean())

    before = err()
    trainer = L.Trainer(
        max_steps=300,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    loader = torch.utils.data.DataLoader(torch.arange(10**6), batch_size=1)
    trainer.fit(m, loader)
    assert err() < 0.3 * before, (before, err())
