"""MemorizationCallback and RepresentationCallback inside a real Trainer: on the diffusion_2d module,
on ReLUDAE, and on a generator of exact copies (rate 1) and of far-away points (rate 0)."""

import lightning as L
import pytest
import torch

from callbacks.memorization import MemorizationCallback
from callbacks.representation import RepresentationCallback
from datamodules.base import IndexedTensorDataset, TensorDataModule
from datamodules.toy2d import Toy2DDataModule
from modules.diffusion import Diffusion
from modules.relu_dae import ReLUDAE


class _Points(TensorDataModule):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(batch_size=len(x), eval_batch_size=len(x))
        self.x = x

    def build(self):
        ds = IndexedTensorDataset(self.x)
        return ds, ds, ds


class _Replay(L.LightningModule):
    """Generates fixed points: training copies (memorised, ratio 0) or other points."""

    def __init__(self, points: torch.Tensor) -> None:
        super().__init__()
        self.points, self.p = points, torch.nn.Parameter(torch.zeros(1))

    def sample(self, n, generator=None):
        return self.points[torch.arange(n) % len(self.points)]

    def training_step(self, batch, batch_idx):
        return (self.p - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module, dm, callbacks, steps=2):
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=str(callbacks[0].tmp),
    )
    trainer.fit(module, datamodule=dm)
    return trainer


@pytest.mark.parametrize("copies,expected", [(True, 1.0), (False, 0.0)])
def test_rate_is_exact_for_copies_and_for_novel_points(tmp_path, copies, expected):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(20, 16, generator=g)  # 4x4 "images": the side-by-side grid is written too
    points = train[:8] if copies else 0.01 * torch.randn(8, 16, generator=g)
    cb = MemorizationCallback(every_n_steps=1, n=8)
    cb.tmp = tmp_path
    trainer = _fit(_Replay(points), _Points(train), [cb])
    assert cb.last["memorization/rate"] == expected
    assert trainer.callback_metrics["memorization/rate"].item() == expected
    if copies:
        assert cb.last["memorization/ratio_median"] == 0.0
    assert any((tmp_path / "media").glob("memorization_nearest_*.png"))
    assert any((tmp_path / "media").glob("memorization_ratio_hist_*.png"))


def test_callback_runs_on_the_diffusion_2d_module(tmp_path):
    cb = MemorizationCallback(every_n_steps=2, n=32)
    cb.tmp = tmp_path
    module = Diffusion(dim=2, hidden=16, depth=1, sample_steps=4)
    dm = Toy2DDataModule(n_train=64, n_val=16, n_test=16, batch_size=32)
    trainer = _fit(module, dm, [cb], steps=2)
    rate = trainer.callback_metrics["memorization/rate"].item()
    assert (
        0.0 <= rate <= 1.0
        and 0.0 <= cb.last["memorization/ratio_q10"] <= cb.last["memorization/ratio_median"]
    )


def test_representation_callback_on_a_dae_storing_samples(tmp_path):
    # rows = +-(centred) training points: the active-row cosine is 1 and the encoder image is written
    e = torch.eye(16)
    train = torch.stack([3 * e[0], -3 * e[0], 3 * e[5], -3 * e[5]])
    dae = ReLUDAE(dim=16, width=4, center=False, lr=0.0)
    with torch.no_grad():
        dae.weight.copy_(torch.stack([e[0], -e[0], e[5], -e[5]]))
    cb = RepresentationCallback(every_n_steps=1, n=4)
    cb.tmp = tmp_path
    trainer = _fit(dae, _Points(train), [cb], steps=1)
    assert cb.last["representation/row_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert trainer.callback_metrics["representation/active_frac"].item() == pytest.approx(0.5)
    assert any((tmp_path / "media").glob("representation_encoder_rows_*.png"))
    with pytest.raises(ValueError, match="representation"):
        RepresentationCallback().measure(trainer, _Replay(train))
