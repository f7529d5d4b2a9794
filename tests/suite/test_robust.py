"""Seeding, mid-epoch resume, NaN guard, EMA and 1-vs-2-process parity on diffusion_2d."""

import json

import pytest
import torch
from omegaconf import open_dict

from suite.config import compose, split_argv
from suite.runner import run as run_cfg
from tests.suite.helpers import Crash

SMALL = ["experiment=diffusion_2d", "logger=none", "module.hidden=16", "module.depth=1", "data.n_train=256",
         "data.n_val=64", "data.n_test=64", "data.batch_size=64", "module.eval_samples=50",
         "module.eval_repeats=2", "module.sample_steps=5", "callbacks.samples.every_n_steps=0",
         "trainer.enable_progress_bar=false", "trainer.val_check_interval=4", "trainer.max_steps=14",
         "checkpoint.every_n_steps=3"]


def weights(folder):
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["state_dict"]


def metrics(folder):
    return json.loads((folder / "results.json").read_text())["metrics"]


def launch(out, *extra, callbacks=None):
    groups, dotlist = split_argv(SMALL + [f"output_dir={out}", *extra])
    cfg = compose(groups, dotlist)
    if callbacks:
        with open_dict(cfg):
            cfg.callbacks.update(callbacks)
    return run_cfg(cfg, groups, quiet=True)


def test_seed_repeats_bit_for_bit(tmp_path):
    launch(tmp_path / "a", "seed=3")
    launch(tmp_path / "b", "seed=3")
    launch(tmp_path / "c", "seed=4")
    wa, wb, wc = (weights(tmp_path / k) for k in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert metrics(tmp_path / "a") == {k: v for k, v in metrics(tmp_path / "b").items() if k != "time/fit_s"} | {
        "time/fit_s": metrics(tmp_path / "a")["time/fit_s"]}


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    """4 batches per epoch; crash at step 7 (last checkpoint: step 6, mid-epoch), resume to 14."""
    launch(tmp_path / "full")
    crash = {"crash": {"_target_": "tests.suite.helpers.CrashAt", "step": 7}}
    with pytest.raises(Crash):
        launch(tmp_path / "resumed", callbacks=crash)
    failed = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert "simulated crash" in failed["failure"]["error"]
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    launch(tmp_path / "resumed", "ckpt_path=last", callbacks=crash)  # same config; CrashAt spares a resumed run
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert metrics(tmp_path / "full")["test/sliced_w2"] == metrics(tmp_path / "resumed")["test/sliced_w2"]


def test_nan_guard_stops_and_keeps_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    poison = {"poison": {"_target_": "tests.suite.helpers.PoisonAt", "step": 8}}
    groups, dotlist = split_argv(SMALL + [f"output_dir={out}"])
    cfg = compose(groups, dotlist)
    with open_dict(cfg):
        cfg.callbacks.update(poison)
    from callbacks.nan_guard import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"step 8: gradient of net\.\S+ has 1 non-finite values"):
        run_cfg(cfg, groups, quiet=True)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert "non-finite" in json.loads((out / "results.json").read_text())["failure"]["error"]


def test_ema_is_saved_and_used(tmp_path):
    out = tmp_path / "ema"
    launch(out, "ema.enabled=true", "ema.decay=0.9")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))
    assert state["updates"] == 14
    # at the end of training the module holds the EMA weights, so last.ckpt's weights are the EMA's
    for k, v in state["shadow"].items():
        torch.testing.assert_close(ckpt["state_dict"][k], v)


def test_global_batch_must_divide(tmp_path):
    from datamodules.base import GlobalBatchSampler

    with pytest.raises(ValueError, match="data.batch_size=63"):
        GlobalBatchSampler(256, 63, world_size=2)
    one = [b for b in GlobalBatchSampler(256, 64, seed=1)]
    two = [GlobalBatchSampler(256, 64, seed=1, rank=r, world_size=2) for r in range(2)]
    halves = [list(a) + list(b) for a, b in zip(*[list(s) for s in two])]
    assert one == halves


def test_ddp_sim_matches_one_process(tmp_path):
    """Same global batch, shuffling on: 2 gloo processes follow the 1-process loss curve."""
    common = ["trainer.max_steps=8", "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=100"]
    launch(tmp_path / "one", *common)
    launch(tmp_path / "two", "trainer=ddp_sim", *common)
    import csv

    def curve(folder):
        rows = list(csv.DictReader(open(folder / "history.csv")))
        return [float(r["train/loss"]) for r in rows if r.get("train/loss")]

    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(one) == len(two) == 8
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-5)
