"""RidgeCallback on a module (the analysis behind it: tests/core/ridge/test_analysis.py)."""

import math

import lightning as L
import torch

from callbacks.ridge import RidgeCallback
from core.ridge.analysis import ridge_time_by_spacing


def test_callback_runs_on_the_diffusion_2d_module(tmp_path):
    """The diffusion_2d setting: VP process, moons data, ridge time from the nearest-neighbour rule."""
    from datamodules.toy2d import Toy2DDataModule
    from modules.diffusion import Diffusion

    module = Diffusion(
        dim=2, process="vp", hidden=16, depth=1, time_dim=8, sample_steps=20, eval_samples=16, eval_repeats=1
    )
    dm = Toy2DDataModule(dataset="moons", n_train=128, n_val=32, n_test=32, batch_size=32)
    cb = RidgeCallback(every_n_steps=2, n=32, d_star=1, ridge_time="auto", n_steps_analysed=10)
    trainer = L.Trainer(
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        callbacks=[cb],
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    for key in (
        "ridge/normal_offset",
        "ridge/time",
        "ridge/last20_tangent_share",
        "ridge/near_train_fraction",
    ):
        assert key in logged, key
    expected_t = ridge_time_by_spacing(dm.train_tensor().double(), module.process)
    assert math.isclose(float(logged["ridge/time"]), expected_t, rel_tol=1e-5)
    assert any(p.suffix == ".png" for p in tmp_path.rglob("*"))


def test_mixture_data_and_mode_fractions():
    from datamodules.ridge_mixture import RidgeMixtureDataModule
    from experiments.ridge_mixture import mode_fractions

    dm = RidgeMixtureDataModule(dim=5, rotate=True, n_train=200, seed=3)
    x = dm.train_tensor()
    assert x.shape == (200, 5) and len(torch.unique(x, dim=0)) == 2  # Dirac modes
    f = float((dm.component == 1).double().mean())  # RMS radius of two points 6 apart, weights 1-f, f
    assert math.isclose(dm.mode_spacing, 6.0, rel_tol=1e-5)
    assert math.isclose(dm.data_radius, 3.0 * math.sqrt(1 - (2 * f - 1) ** 2), rel_tol=1e-5)
    modes = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    pts = torch.tensor([[3.1, 0.0], [0.0, 0.1], [0.0, 1.0], [4.5, 0.0]])
    near, inter = mode_fractions(pts, modes, torch.zeros(2), 6.0, near_radius=0.1, ridge_radius=0.05)
    assert near.tolist() == [True, False, False, False]
    assert inter.tolist() == [False, True, False, False]  # beyond a mode is on the line, not between modes
